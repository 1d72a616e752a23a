"""Test tiers, enforced: a test is `pure` unless marked `process`, `kernel` or `system`.

- pure (no marker): one process, no sockets to anything, no subprocesses; fast.
- process: a real broker, a live root or cluster server, a subprocess (no root needed).
- kernel: needs root and creates its own network namespaces.
- system: several real processes of ours together (broker, services, net managers).

A test using a fixture that starts a real broker or server (PROCESS_FIXTURES) is marked
`process` here, so component conftests need not repeat it. A pure test that still binds
or connects a socket or starts a subprocess fails with a message saying so: the tier a
test runs in stays honest without anyone auditing it.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

TIERS = ("process", "kernel", "system", "compose")
PROCESS_FIXTURES = frozenset({"mosquitto", "mqtt_recorder", "root_server"})


def mark_process_tests(items: list[pytest.Item]) -> None:
    """Mark `process` every test whose fixtures start a real broker or server."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & PROCESS_FIXTURES and not any(item.get_closest_marker(t) for t in TIERS):
            item.add_marker(pytest.mark.process)


def is_pure(item: pytest.Item) -> bool:
    return not any(item.get_closest_marker(tier) for tier in TIERS)


class NotPure(AssertionError):
    """A test without a tier marker did what only process/kernel/system tests may do."""


def _refuse(what: str) -> Any:
    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise NotPure(f"a pure test {what}: mark it process (or kernel/system)")

    return refused


@pytest.fixture(autouse=True)
def _pure_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """In pure tests, network sockets and subprocesses raise NotPure."""
    if not is_pure(request.node):
        yield
        return
    patch = pytest.MonkeyPatch()
    for name in ("bind", "connect", "connect_ex"):
        original = getattr(socket.socket, name)
        patch.setattr(socket.socket, name, _guarded(original, name))
    patch.setattr(subprocess.Popen, "_execute_child", _refuse("started a subprocess"))
    try:
        yield
    finally:
        patch.undo()


def _guarded(original: Any, name: str) -> Any:
    """socket.<name>, refused for network families (AF_UNIX socketpairs and files stay)."""

    def guarded(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise NotPure(f"a pure test called socket.{name}{args!r}: mark it process")
        return original(sock, *args, **kwargs)

    return guarded
