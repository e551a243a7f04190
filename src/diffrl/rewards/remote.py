"""Serve a reward over HTTP, and call one: `get_reward("remote:http://host:port")`.

Why: a reward model may need its own GPU, process or environment (DDPO scored LLaVA this way).
Standard library only (http.server + urllib); images travel as raw bytes, never pickle.

Wire format, POST /score:
    body = 4-byte big-endian header length | UTF-8 JSON header | raw image bytes
    header = {"shape": [N, H, W, 3], "dtype": "uint8", "prompts": [N strings], "metadata": [N objects]}
    image bytes = N*H*W*3 bytes, C order (numpy's `tobytes()`)
Responses are JSON: 200 {"rewards": [N floats]} (NaN allowed, as Python's json writes it), or
{"error": "..."} with 400 (malformed), 404, 411 (no Content-Length), 413 (body over the server's
limit), 422 (the reward raised DiffrlError: a user-fixable problem), 500 (the reward crashed).
GET /health -> 200 {"status": "ok", "reward": NAME, "max_body_bytes": LIMIT}.
The client retries connection failures, timeouts and 502/503/504 with exponential backoff. A server
that stays unreachable, answers 500 (the reward crashed) or sends a reply that is not JSON raises
RewardUnavailable (the trainer halts with a checkpoint, exit 3); any other HTTP error (400, 404, 411,
413, 422: the request or its content is at fault) raises a plain one-line DiffrlError at once.
"""
from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from diffrl.errors import DiffrlError, RewardUnavailable
from diffrl.rewards.base import Reward, check_rewards, register_reward_scheme

HEADER_PREFIX = struct.Struct(">I")
DEFAULT_MAX_BODY_BYTES = 256 * 2**20
MAX_HEADER_BYTES = 16 * 2**20
DRAIN_LIMIT = 1 << 30  # read and discard at most this much of an oversized body, so the 413 reaches the client


def encode_request(images: np.ndarray, prompts: list[str], metadata: list[dict]) -> bytes:
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DiffrlError(f"remote reward: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    header = json.dumps({
        "shape": list(images.shape), "dtype": "uint8", "prompts": list(prompts), "metadata": list(metadata),
    }, default=_jsonable).encode()
    return HEADER_PREFIX.pack(len(header)) + header + images.tobytes()


def _jsonable(value):
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)


class BadRequest(Exception):
    """A malformed request: answered with 400 and the message."""


def decode_request(body: bytes) -> tuple[np.ndarray, list[str], list[dict]]:
    if len(body) < HEADER_PREFIX.size:
        raise BadRequest("body shorter than the 4-byte header length")
    (size,) = HEADER_PREFIX.unpack_from(body)
    if size > MAX_HEADER_BYTES or HEADER_PREFIX.size + size > len(body):
        raise BadRequest(f"header length {size} does not fit in a body of {len(body)} bytes")
    try:
        header = json.loads(body[HEADER_PREFIX.size: HEADER_PREFIX.size + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise BadRequest("header must be a JSON object")
    shape, prompts = header.get("shape"), header.get("prompts")
    if header.get("dtype") != "uint8":
        raise BadRequest(f"dtype must be 'uint8', got {header.get('dtype')!r}")
    if not (isinstance(shape, list) and len(shape) == 4 and all(type(s) is int and s >= 0 for s in shape)
            and shape[3] == 3):
        raise BadRequest(f"shape must be [N, H, W, 3] of non-negative integers, got {shape!r}")
    n = shape[0]
    if not (isinstance(prompts, list) and len(prompts) == n and all(isinstance(p, str) for p in prompts)):
        raise BadRequest(f"prompts must be a list of {n} strings")
    metadata = header.get("metadata", [{}] * n)
    if not (isinstance(metadata, list) and len(metadata) == n and all(isinstance(m, dict) for m in metadata)):
        raise BadRequest(f"metadata must be a list of {n} objects")
    raw = memoryview(body)[HEADER_PREFIX.size + size:]
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise BadRequest(f"expected {expected} image bytes for shape {shape}, got {len(raw)}")
    images = np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy()
    return images, prompts, metadata


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer
    timeout = 60  # seconds a stalled client may hold a connection
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's signature)
        if not self.server.quiet:
            super().log_message(format, *args)

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.rstrip("/") == "/health":
            self._reply(200, {"status": "ok", "reward": self.server.reward_name,
                              "max_body_bytes": self.server.max_body_bytes})
        else:
            self._reply(404, {"error": f"no route GET {self.path}; use GET /health or POST /score"})

    def do_POST(self):
        try:
            self._score()
        except (socket.timeout, ConnectionError) as err:  # client stalled or went away: drop it
            self.close_connection = True
            self.log_error("dropped connection: %s", err)

    def _score(self):
        if self.path.rstrip("/") != "/score":
            return self._reply(404, {"error": f"no route POST {self.path}; use POST /score"})
        try:
            length = int(self.headers.get("Content-Length", ""))
            if length < 0:
                raise ValueError
        except ValueError:
            return self._reply(411, {"error": "a valid Content-Length header is required"})
        if length > self.server.max_body_bytes:
            self._drain(length)
            return self._reply(413, {"error": f"body of {length} bytes exceeds the server limit of "
                                              f"{self.server.max_body_bytes} bytes; send smaller batches"})
        body = self.rfile.read(length)
        if len(body) < length:
            return self._reply(400, {"error": f"truncated body: got {len(body)} of {length} bytes"})
        try:
            images, prompts, metadata = decode_request(body)
        except BadRequest as err:
            return self._reply(400, {"error": str(err)})
        try:
            with self.server.lock:  # one batch at a time: the reward model is not assumed thread-safe
                values = self.server.reward(images, prompts, metadata)
        except DiffrlError as err:
            return self._reply(422, {"error": str(err)})
        except Exception as err:  # the reward crashed: report it, keep serving
            return self._reply(500, {"error": f"reward raised {type(err).__name__}: {err}"})
        try:
            values = check_rewards(values, len(images), self.server.reward_name)
        except DiffrlError as err:  # the reward broke the contract: a server-side bug, not the client's
            return self._reply(500, {"error": str(err)})
        self._reply(200, {"rewards": values.tolist()})

    def _drain(self, length: int) -> None:
        """Read and discard the body, so closing the socket does not reset the connection before the reply."""
        left = min(length, DRAIN_LIMIT)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)


class RewardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, reward: Reward, host: str, port: int, max_body_bytes: int, name: str, quiet: bool):
        self.reward, self.reward_name = reward, name
        self.max_body_bytes, self.quiet = max_body_bytes, quiet
        self.lock = threading.Lock()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(reward: Reward, host: str = "127.0.0.1", port: int = 0,
                max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, name: str | None = None,
                quiet: bool = True) -> RewardServer:
    """A bound, not yet running server (port 0 picks a free port; see `.url`); run `serve_forever()`."""
    name = name or getattr(reward, "__name__", type(reward).__name__)
    try:
        return RewardServer(reward, host, port, max_body_bytes, name, quiet)
    except OSError as err:
        raise DiffrlError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def serve(reward: Reward, host: str = "127.0.0.1", port: int = 8000,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, name: str | None = None) -> None:
    """Serve `reward` until interrupted (Ctrl-C)."""
    server = make_server(reward, host, port, max_body_bytes, name, quiet=False)
    print(f"serving reward {server.reward_name!r} on {server.url} (POST /score, GET /health)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


_RETRYABLE_STATUS = {502, 503, 504}


class RemoteReward:
    """A reward computed by a server started with `diffrl serve-reward` (or `serve`)."""

    def __init__(self, url: str, timeout: float = 60, retries: int = 3, backoff: float = 1.0):
        if not url.startswith(("http://", "https://")):
            raise DiffrlError(f"remote reward URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    def __repr__(self) -> str:
        return f"RemoteReward({self.url!r})"

    def health(self) -> dict:
        return self._request("GET", "/health", None)

    def __call__(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        body = encode_request(images, prompts, metadata)
        reply = self._request("POST", "/score", body)
        return check_rewards(reply.get("rewards"), len(images), f"remote:{self.url}")

    def _request(self, method: str, path: str, body: bytes | None) -> dict:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url + path, data=body, method=method,
                                             headers={"Content-Type": "application/octet-stream"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                message = _error_message(err)
                if err.code not in _RETRYABLE_STATUS:
                    error = RewardUnavailable if err.code >= 500 else DiffrlError  # 5xx: the server failed
                    raise error(f"reward server {self.url} answered {err.code}: {message}") from None
                last = f"HTTP {err.code}: {message}"
            except urllib.error.URLError as err:
                last = str(err.reason)
            except (TimeoutError, socket.timeout):
                last = f"no answer within {self.timeout:g} s"
            except (ConnectionError, http.client.HTTPException) as err:
                last = f"{type(err).__name__}: {err}"
            except json.JSONDecodeError:
                raise RewardUnavailable(f"reward server {self.url} sent a reply that is not JSON") from None
        raise RewardUnavailable(f"reward server {self.url} unreachable after {self.retries + 1} attempts ({last}); "
                                "is `diffrl serve-reward` running there?")


@register_reward_scheme("remote")
def _remote_reward(url: str) -> RemoteReward:
    """`get_reward("remote:http://host:port")`: registered here, so the registry never imports this module's names."""
    return RemoteReward(url)


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(err.read()).get("error", err.reason))
    except (ValueError, AttributeError, OSError):
        return str(err.reason)


def register(subparsers) -> None:
    """Add `serve-reward` to an argparse CLI's subcommands (the parser lives in `diffrl.cli.serve_reward`)."""
    from diffrl.cli import serve_reward

    serve_reward.add_parser(subparsers)
