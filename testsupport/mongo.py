"""The `mongo` test tier: the store's tests again, against a MongoDB-wire server.

With `pytest --mongo`, a SecantusDB (PyPI `secantusdb`, test-only; a MongoDB-wire
server with its own storage engine) is started for the session on a free 127.0.0.1
port with its data in a temporary directory, and `MONGO_URL` points at it, so every
fixture that builds a database through `oakestra_net.store` gets a fresh database on
that server instead of the embedded one (with pytest-xdist, one server per worker; the
controller starts none). The server is stopped (by its PID) and its directory removed
at the end.

Tests that touch the store are marked `store` automatically (they use one of the
`STORE_FIXTURES`, or carry the marker themselves); `make test-mongo` runs
`pytest --mongo -m store`. Without `--mongo` nothing starts and nothing changes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

STORE_FIXTURES = frozenset({"db", "root_server", "cluster", "make_cluster", "mongo_url"})
START_TIMEOUT = 60.0
_server: SecantusServer | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--mongo",
        action="store_true",
        help="run store tests against a SecantusDB started for the session (sets MONGO_URL)",
    )


def pytest_configure(config: pytest.Config) -> None:
    global _server
    config.addinivalue_line(
        "markers", "store: touches the store; the mongo tier runs it against SecantusDB"
    )
    if not config.getoption("--mongo") or _is_xdist_controller(config):
        return
    _server = SecantusServer().start()  # one per xdist worker: the workers run in parallel
    os.environ["MONGO_URL"] = _server.url


def _is_xdist_controller(config: pytest.Config) -> bool:
    """Whether this process only hands tests to pytest-xdist workers (`-n N`)."""
    workers = getattr(config.option, "numprocesses", None)
    return bool(workers) and not hasattr(config, "workerinput")


def pytest_unconfigure(config: pytest.Config) -> None:
    global _server
    if _server is not None:
        _server.stop()
        os.environ.pop("MONGO_URL", None)
        _server = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    against_server = config.getoption("--mongo")
    for item in items:
        if STORE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.store)
            if against_server:  # it talks to the tier's server: not a pure test any more
                item.add_marker(pytest.mark.process)


@pytest.fixture
def mongo_url() -> str:
    """The tier's server URL (no database); skips the test outside the mongo tier."""
    url = os.environ.get("MONGO_URL", "")
    if not url.startswith("mongodb"):
        pytest.skip("needs a MongoDB-wire server: run the mongo tier (make test-mongo)")
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _program() -> str:
    local = Path(sys.executable).parent / "secantusd-py"
    found = str(local) if local.exists() else shutil.which("secantusd-py")
    if not found:
        raise pytest.UsageError("secantusd-py not found: pip install -r requirements-dev.txt")
    return found


class SecantusServer:
    """One SecantusDB process of ours on a loopback port, data in a temporary directory."""

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="oak-mongo-tier-"))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> SecantusServer:
        argv = [_program(), "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--storage-path", str(self.workdir / "data"), "--log-level", "WARNING"]
        with open(self.workdir / "secantusdb.log", "ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        import pymongo

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"secantusdb exited: {self.log_text()[-2000:]}")
            try:
                client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=500)
                try:
                    client.admin.command("ping")
                    return
                finally:
                    client.close()
            except pymongo.errors.PyMongoError:
                time.sleep(0.1)
        raise RuntimeError(f"secantusdb not ready after {START_TIMEOUT} s")

    def log_text(self) -> str:
        try:
            return (self.workdir / "secantusdb.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
