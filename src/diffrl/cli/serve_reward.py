"""`diffrl serve-reward`: serve a reward over HTTP for `remote:http://host:port` rewards (diffrl.rewards.remote)."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from diffrl.rewards.remote import DEFAULT_MAX_BODY_BYTES

    p = subparsers.add_parser("serve-reward", help="serve a reward over HTTP for remote:URL rewards",
                              description="Serve a reward over HTTP: POST /score, GET /health.")
    p.add_argument("--reward", required=True, help="reward name, module:function, or a weighted spec 'name:w,name:w'")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0 picks a free one)")
    p.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / 2**20,
                   help="largest request accepted, in MiB (larger ones get 413)")
    p.set_defaults(func=run)


def run(args) -> int:
    from diffrl.rewards.base import parse_reward_spec
    from diffrl.rewards.remote import serve

    reward = parse_reward_spec(args.reward)
    serve(reward, args.host, args.port, int(args.max_body_mb * 2**20), name=args.reward)
    return 0
