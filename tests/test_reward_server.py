"""The reward server on loopback: round trips, concurrency, malformed and oversized requests, outages."""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from diffrl.errors import DiffrlError
from diffrl.rewards import get_reward
from diffrl.rewards.remote import RemoteReward, encode_request, make_server


def brightness_plus_len(images, prompts, metadata):
    """Depends on all three inputs, so a mix-up in any of them shows."""
    bonus = [m.get("bonus", 0.0) for m in metadata]
    return np.asarray(images, dtype=np.float64).mean(axis=(1, 2, 3)) / 255 + np.array([len(p) for p in prompts]) + bonus


def failing(images, prompts, metadata):
    if prompts and prompts[0] == "user error":
        raise DiffrlError("prompt is not a spatial prompt")
    raise RuntimeError("CUDA out of memory")


@pytest.fixture
def server():
    srv = make_server(brightness_plus_len, port=0, max_body_bytes=64 * 1024)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def batch(n=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return images, [f"prompt {i}" * (i + 1) for i in range(n)], [{"bonus": float(i)} for i in range(n)]


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/score", body=body, headers=headers or {})
    response = conn.getresponse()
    status, payload = response.status, json.loads(response.read())
    conn.close()
    return status, payload


def test_round_trip_equals_local_call(server):
    images, prompts, metadata = batch()
    reward = get_reward(f"remote:{server.url}")
    assert isinstance(reward, RemoteReward)
    np.testing.assert_array_equal(reward(images, prompts, metadata), brightness_plus_len(images, prompts, metadata))
    assert reward.health()["status"] == "ok"
    assert reward(images[:0], [], []).shape == (0,)


def test_nan_rewards_pass_through(server):
    server.reward = lambda images, prompts, metadata: np.array([np.nan, 1.0])
    values = RemoteReward(server.url)(*batch(2))
    assert np.isnan(values[0]) and values[1] == 1.0


def test_concurrent_clients(server):
    reward = RemoteReward(server.url)

    def one(seed):
        images, prompts, metadata = batch(n=1 + seed % 4, seed=seed)
        return np.array_equal(reward(images, prompts, metadata), brightness_plus_len(images, prompts, metadata))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, range(24)))


@pytest.mark.parametrize("body, fragment", [
    (b"", "shorter than"),
    (b"\x00\x00", "shorter than"),
    (struct.pack(">I", 1000) + b"{}", "does not fit"),
    (struct.pack(">I", 3) + b"{{{", "not JSON"),
    (struct.pack(">I", 2) + b"[]", "JSON object"),
    (encode_request(*batch())[:-5], "image bytes"),
    (encode_request(*batch()) + b"extra", "image bytes"),
])
def test_malformed_bodies_get_400(server, body, fragment):
    status, payload = post(server.url, body)
    assert status == 400 and fragment in payload["error"]
    assert RemoteReward(server.url)(*batch(1))[0] > 0  # still serving


def header_only(**header) -> bytes:
    data = json.dumps(header).encode()
    return struct.pack(">I", len(data)) + data


@pytest.mark.parametrize("header, fragment", [
    ({"shape": [1, 2, 2, 3], "dtype": "float32", "prompts": ["a"]}, "dtype"),
    ({"shape": [1, 2, 2], "dtype": "uint8", "prompts": ["a"]}, "shape"),
    ({"shape": [1, 2, 2, 4], "dtype": "uint8", "prompts": ["a"]}, "shape"),
    ({"shape": [1, -2, 2, 3], "dtype": "uint8", "prompts": ["a"]}, "shape"),
    ({"shape": [2, 2, 2, 3], "dtype": "uint8", "prompts": ["a"]}, "prompts"),
    ({"shape": [1, 2, 2, 3], "dtype": "uint8", "prompts": [1]}, "prompts"),
    ({"shape": [1, 2, 2, 3], "dtype": "uint8", "prompts": ["a"], "metadata": [1]}, "metadata"),
])
def test_wrong_headers_get_400(server, header, fragment):
    status, payload = post(server.url, header_only(**header) + bytes(12))
    assert status == 400 and fragment in payload["error"]


def test_oversized_body_gets_413(server):
    images, prompts, metadata = batch(n=2, size=128)  # ~98 KB > 64 KiB limit
    status, payload = post(server.url, encode_request(images, prompts, metadata))
    assert status == 413 and "limit" in payload["error"]
    with pytest.raises(DiffrlError, match="413"):
        RemoteReward(server.url, retries=0)(images, prompts, metadata)
    assert RemoteReward(server.url)(*batch(1))[0] > 0


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (it does after any error reply)."""
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_truncated_body_and_missing_length(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:  # declares 1000 bytes, sends 10, hangs up
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        sock.shutdown(socket.SHUT_WR)
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 400") and b"truncated" in reply
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 411")
    status, _ = post(server.url.replace("/score", ""), b"", {"Content-Length": "-5"})
    assert status == 411
    assert RemoteReward(server.url)(*batch(1))[0] > 0


def test_unknown_routes_get_404(server):
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/nope")
    assert conn.getresponse().status == 404
    conn.close()


def test_reward_errors_are_reported_not_retried(server):
    server.reward = failing
    calls = []
    real = server.reward

    def counting(*args):
        calls.append(1)
        return real(*args)

    server.reward = counting
    client = RemoteReward(server.url, retries=3, backoff=0.01)
    with pytest.raises(DiffrlError, match="422: prompt is not a spatial prompt"):
        client(np.zeros((1, 2, 2, 3), np.uint8), ["user error"], [{}])
    with pytest.raises(DiffrlError, match="500: reward raised RuntimeError: CUDA out of memory"):
        client(np.zeros((1, 2, 2, 3), np.uint8), ["x"], [{}])
    assert len(calls) == 2
    server.reward = lambda images, prompts, metadata: [1.0]  # wrong length
    with pytest.raises(DiffrlError, match="500.*shape"):
        client(np.zeros((2, 2, 2, 3), np.uint8), ["x", "y"], [{}, {}])


def test_reward_spec_with_remote_url(server):
    """parse_reward_spec reads a trailing ':<number>' as a weight, so a bare ':port' would be taken for one:
    write the URL with a trailing slash, or give the weight explicitly."""
    from diffrl.rewards import parse_reward_spec

    images, prompts, metadata = batch()
    expected = brightness_plus_len(images, prompts, metadata)
    for spec, weight in [(f"remote:{server.url}/", 1.0), (f"remote:{server.url}:0.5", 0.5)]:
        combined = parse_reward_spec(spec)
        np.testing.assert_allclose(combined(images, prompts, metadata), weight * expected)


def test_client_validates_images_and_url():
    with pytest.raises(DiffrlError, match="uint8"):
        encode_request(np.zeros((1, 2, 2, 3), np.float32), ["a"], [{}])
    with pytest.raises(DiffrlError, match="http://"):
        RemoteReward("localhost:8000")


def test_server_stopped_mid_run_gives_clear_error_in_bounded_time(server):
    client = RemoteReward(server.url, timeout=2, retries=2, backoff=0.05)
    images, prompts, metadata = batch()
    assert client(images, prompts, metadata).shape == (3,)
    server.shutdown()
    server.server_close()
    start = time.monotonic()
    with pytest.raises(DiffrlError) as err:
        client(images, prompts, metadata)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "\n" not in message and server.url in message and "unreachable after 3 attempts" in message


def test_unresponsive_server_times_out():
    listener = socket.socket()  # accepts connections, never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        client = RemoteReward(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3, retries=1, backoff=0.01)
        start = time.monotonic()
        with pytest.raises(DiffrlError, match="no answer within 0.3 s"):
            client(*batch(1))
        assert time.monotonic() - start < 3
    finally:
        listener.close()


SLOW_MODULE = """
import time
import numpy as np


def reward(images, prompts, metadata):
    if prompts[0] == "slow":
        time.sleep(30)
    return np.asarray(images, dtype=np.float64).mean(axis=(1, 2, 3)) / 255
"""


def test_cli_serve_reward_killed_mid_request(tmp_path):
    """register() in an argparse CLI, run as a real process, killed while a request is in flight."""
    (tmp_path / "slowmod.py").write_text(SLOW_MODULE)
    code = ("import argparse, sys; from diffrl.rewards.remote import register; p = argparse.ArgumentParser(); "
            "register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    proc = subprocess.Popen([sys.executable, "-c", code, "serve-reward", "--reward", "slowmod:reward", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert "serving reward 'slowmod:reward' on http://127.0.0.1:" in line, proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        images = np.full((2, 4, 4, 3), 51, dtype=np.uint8)
        client = RemoteReward(url, timeout=20, retries=2, backoff=0.05)
        np.testing.assert_allclose(client(images, ["a", "b"], [{}, {}]), [0.2, 0.2])
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(client, images, ["slow", "b"], [{}, {}])
            time.sleep(0.5)  # the request is now inside the reward
            start = time.monotonic()
            proc.kill()
            with pytest.raises(DiffrlError, match="unreachable after 3 attempts") as err:
                future.result(timeout=15)
            assert time.monotonic() - start < 5 and "\n" not in str(err.value)
    finally:
        proc.kill()
        proc.wait(10)
