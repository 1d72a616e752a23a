"""Slow or idle HTTP clients cannot starve the others: the served root keeps answering."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import requests

from testsupport import SlowClients, free_port, wait_until

pytestmark = pytest.mark.system


@pytest.fixture
def served_root(tmp_path):
    port = free_port()
    script = shutil.which("root-service-manager", path=os.path.dirname(sys.executable))
    env = {
        **os.environ,
        "BIND": f"127.0.0.1:{port}",
        "JWT_GENERATOR_URL": "127.0.0.1",
        "JWT_GENERATOR_PORT": "9",
    }
    env.pop("MONGO_URL", None)
    with open(tmp_path / "root.log", "wb") as log:
        process = subprocess.Popen([script], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _status(f"{base}/healthz") == 200, timeout=20, message="root not up")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=15)


def _status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=1).status_code
    except requests.RequestException:
        return None


def test_fifty_slow_clients_do_not_block_healthz(served_root):
    url = f"http://127.0.0.1:{served_root}/healthz"
    with SlowClients("127.0.0.1", served_root, 50) as slow:
        for _ in range(3):
            started = time.monotonic()
            assert requests.get(url, timeout=10).status_code == 200
            assert time.monotonic() - started < 3
        # and the slow ones are dropped after a bounded time, not kept for ever
        wait_until(lambda: slow.open_count() == 0, timeout=60, message="slow clients kept")


def test_over_long_request_line_and_headers_get_json(served_root):
    def raw(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", served_root), timeout=10) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        return answer

    too_long_path = b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    too_long_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10_000 + b"\r\n\r\n"
    for request, status in ((too_long_path, b"414"), (too_long_header, b"431")):
        head, _, body = raw(request).partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == status, head
        assert b"application/json" in head.lower()
        assert b'"reason"' in body
