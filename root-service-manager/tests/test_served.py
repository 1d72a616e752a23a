"""The console script serves the app with gunicorn: the way operators run it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from testsupport import free_port, wait_until

pytestmark = pytest.mark.process  # real broker / server / subprocess


def test_console_script_serves_the_api():
    port = free_port()
    script = shutil.which("root-service-manager", path=os.path.dirname(sys.executable))
    assert script, "console script root-service-manager is not installed"
    env = {
        **os.environ,
        "BIND": f"127.0.0.1:{port}",
        "JWT_GENERATOR_URL": "127.0.0.1",
        "JWT_GENERATOR_PORT": "9",
    }
    env.pop("MONGO_URL", None)
    process = subprocess.Popen([script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy():
            try:
                return requests.get(f"{base}/healthz", timeout=2).status_code == 200
            except requests.RequestException:  # not listening yet, or busy starting
                return False

        wait_until(healthy, timeout=20, message="root service manager did not come up")
        assert requests.get(f"{base}/healthz").json()["store"] == "embedded"
        # a new store: no allocation until the clusters could report (none here: 3 s)
        wait_until(lambda: not requests.get(f"{base}/healthz").json()["rebuilding"], timeout=20)
        first = requests.get(f"{base}/api/net/subnet").json()
        second = requests.get(f"{base}/api/net/subnet").json()
        assert first["subnet_addr"] != second["subnet_addr"]
        refused = requests.post(f"{base}/api/net/cluster", data="nope")
        assert refused.status_code == 400 and refused.json()["reason"]
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode()
    assert "NOT PERSISTENT" in output


def test_a_killed_server_leaves_its_port_to_the_next_one(tmp_path):
    """SIGKILL of gunicorn's master (a crash): its orphaned worker stops listening at
    once, even while it still waits for a request body, so a restart binds the port."""
    port = free_port()
    script = shutil.which("root-service-manager", path=os.path.dirname(sys.executable))
    assert script, "console script root-service-manager is not installed"
    env = {**os.environ, "BIND": f"127.0.0.1:{port}", "JWT_GENERATOR_URL": "127.0.0.1",
           "JWT_GENERATOR_PORT": "9"}  # fmt: skip
    env.pop("MONGO_URL", None)
    started: list[int] = []

    def serve(log: Path) -> subprocess.Popen:
        with open(log, "wb") as out:
            process = subprocess.Popen([script], env=env, stdout=out, stderr=subprocess.STDOUT)
        started.append(process.pid)
        return process

    try:
        first = serve(tmp_path / "first.log")
        wait_until(lambda: _children(first.pid), timeout=20, message="no worker")
        (worker,) = _children(first.pid)
        started.append(worker)
        wait_until(lambda: _answers(port), timeout=20, message="the server did not come up")
        half = socket.create_connection(("127.0.0.1", port))
        # a request whose body never comes: a thread of the worker waits for it
        half.sendall(b"POST /api/net/cluster HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n{")
        peer = half.getsockname()[1]
        wait_until(lambda: _holds(worker, port, peer), timeout=5, message="not accepted")
        first.kill()
        first.wait(5)
        second = serve(tmp_path / "second.log")
        log = tmp_path / "second.log"
        wait_until(
            lambda: "Listening at" in log.read_text() or second.poll() is not None, timeout=20
        )
        assert second.poll() is None, log.read_text()
        half.close()
    finally:
        for pid in reversed(started):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _holds(pid: int, port: int, peer: int) -> bool:
    """Whether `pid` holds the accepted end of the connection 127.0.0.1:peer -> :port."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
            if int(local, 16) == port and int(remote, 16) == peer:
                inodes.add(f"socket:[{fields[9]}]")
    fds = f"/proc/{pid}/fd"
    return any(os.readlink(f"{fds}/{fd}") in inodes for fd in os.listdir(fds))


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found
