"""Waiting on events in tests: poll a condition with a deadline, never sleep a fixed time."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_until(
    predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.02, message: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    An AssertionError raised by the predicate counts as "not yet". On timeout, raises
    AssertionError with `message` and the last value seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: Any = predicate()
        except AssertionError as err:
            last = err
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            what = message or "condition not met"
            raise AssertionError(f"{what} within {timeout} s (last value: {last!r})")
        time.sleep(interval)
