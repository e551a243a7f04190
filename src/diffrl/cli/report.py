"""`diffrl report`: figures and HTML rebuilt from finished run directories (diffrl.report)."""
from __future__ import annotations

from pathlib import Path

from diffrl.errors import DiffrlError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="rebuild figures + HTML from finished run directories",
                              description="Groups runs by their config's algorithm and K (seeds are replicates) and "
                                          "writes report.json, reward_vs_images.png, reward_vs_wallclock.png, "
                                          "report.html, and under OUT/records/ each run's record (config and "
                                          "metrics, no weights): RUN_DIR may be a record, so `diffrl report "
                                          "OUT/records/*/* NEW_RUN... --out OUT` extends a report after its run "
                                          "directories are gone.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, default=Path("report"), help="output directory (default: ./report)")
    p.add_argument("--split-by", dest="split_by", action="append", default=[], metavar="SECTION.KEY",
                   help="also group by this config key, e.g. train.learning_rate for a learning-rate sweep's runs "
                        "(repeatable; default: algorithm and K only)")
    add_target_flag(p)
    p.set_defaults(func=run)


def add_target_flag(parser) -> None:
    parser.add_argument("--target", dest="targets", action="append", default=[], metavar="METRIC=VALUE",
                        help="also report the images and seconds until METRIC first reaches VALUE, e.g. "
                             "eval/shapes_success=0.85 (repeatable)")


def run(args) -> int:
    from diffrl.report import default_label, load_run, parse_target, write_records, write_report

    targets = [parse_target(t) for t in args.targets]
    groups: dict[str, list[dict]] = {}
    for run_dir in args.runs:
        loaded = load_run(run_dir)
        if not loaded["finished"]:
            print(f"diffrl: report: {run_dir} is not finished; skipped")
            continue
        if loaded["stopped_early"]:
            print(f"diffrl: report: note: {run_dir} stopped early at epoch {loaded['last_epoch']} "
                  f"({loaded['stopped_early']})")
        label = " ".join([default_label(loaded["config"])] +
                         [f"{key}={config_value(loaded['config'], key, run_dir)}" for key in args.split_by])
        groups.setdefault(label, []).append(loaded)
    if not groups:
        raise DiffrlError("no finished run among the given directories")
    for label, runs in groups.items():
        runs.sort(key=lambda r: r["config"]["run"]["seed"])
        settings = [{s: {k: v for k, v in sec.items() if k not in ("seed", "out", "progress", "threads")}
                     for s, sec in r["config"].items()} for r in runs]
        # A run made before a key existed lacks it (it ran as that key's default): compare the runs that have it.
        keys = {(s, k) for x in settings for s, sec in x.items() for k in sec}
        differing = sorted(f"{s}.{k}" for s, k in keys
                           if len({repr(x[s][k]) for x in settings if k in x.get(s, {})}) > 1)
        if differing:
            print(f"diffrl: report: note: the runs of {label} differ in more than their seed: {', '.join(differing)}")
    write_report(groups, args.out, title="diffrl report", targets=targets)
    write_records([r for runs in groups.values() for r in runs], args.out / "records")
    print(f"diffrl: report: {sum(map(len, groups.values()))} run(s) in {len(groups)} group(s); "
          f"wrote {args.out / 'report.html'}")
    return 0


def config_value(config: dict, key: str, run_dir: Path):
    """config['train']['learning_rate'] for 'train.learning_rate'; a one-line error when the run has no such key."""
    section, _, name = key.partition(".")
    if name not in config.get(section, {}):
        raise DiffrlError(f"--split-by {key}: {run_dir}'s config has no such key (SECTION.KEY, e.g. train.learning_rate)")
    return config[section][name]
