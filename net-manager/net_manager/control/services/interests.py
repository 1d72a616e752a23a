"""Which remote jobs this node is interested in, and when an interest expires.

An interest in a job means the node is subscribed to `jobs/<job>/updates_available` and
keeps the job's translation-table entries. It starts when a table query returns the job
(add_remote). It ends when the job has been idle for `idle_timeout` seconds (default 10,
as upstream) and no instance of it runs on this node: mark_used() restarts the idle timer
each time traffic to the job is seen, set_local() records how many local instances
exist, and a job with a local instance never expires (the seed: a worker is always
subscribed to the services deployed on it). When the last local instance goes, the idle
timer restarts, so the entries outlive the instance by `idle_timeout` (upstream keeps
them until its timer fires; it had been paused while deployed).

Subscribing, publishing `interest/remove` and dropping table entries are the caller's
job; this module only keeps the registry. Thread-safe; the clock is injectable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_IDLE_TIMEOUT = 10.0


@dataclass
class _Interest:
    last_used: float


class Interests:
    """The interest registry: job name -> last use, plus local instance counts."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, idle_timeout: float = 10.0
    ) -> None:
        if not idle_timeout > 0:
            raise ValueError(f"interest idle_timeout must be > 0 seconds, got {idle_timeout!r}")
        self._clock = clock
        self.idle_timeout = float(idle_timeout)
        self._lock = threading.Lock()
        self._interests: dict[str, _Interest] = {}
        # Kept apart from _interests: an instance may be deployed before the interest exists.
        self._local: dict[str, int] = {}

    def add_remote(self, job_name: str) -> bool:
        """Register an interest in `job_name` (and count it as used); True if it is new."""
        _check_name(job_name)
        now = self._clock()
        with self._lock:
            interest = self._interests.get(job_name)
            if interest is not None:
                interest.last_used = max(interest.last_used, now)
                return False
            self._interests[job_name] = _Interest(last_used=now)
            return True

    def mark_used(self, job_name: str) -> None:
        """Traffic to `job_name` was seen: restart its idle timer. Unknown jobs are ignored."""
        now = self._clock()
        with self._lock:
            interest = self._interests.get(job_name)
            if interest is not None:
                interest.last_used = max(interest.last_used, now)

    def set_local(self, job_name: str, count: int) -> None:
        """`count` instances of `job_name` run on this node; while > 0 the interest stays."""
        _check_name(job_name)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"local instance count of {job_name} must be >= 0, got {count!r}")
        now = self._clock()
        with self._lock:
            was_local = self._local.get(job_name, 0) > 0
            if count:
                self._local[job_name] = count
            else:
                self._local.pop(job_name, None)
            interest = self._interests.get(job_name)
            if was_local and not count and interest is not None:
                interest.last_used = max(interest.last_used, now)

    def expired(self, now: float | None = None, *, lag: float = 0.0) -> list[str]:
        """Remove and return (sorted) the jobs idle >= idle_timeout with no local instance.
        `lag`: use is reported up to that many seconds late (the data plane looks at it
        less often), so idleness is measured up to `now - lag`: a job used in the last
        `lag` seconds is not dropped before that use is seen, only up to `lag` late."""
        now = self._clock() if now is None else now
        seen_until = now - max(0.0, lag)
        with self._lock:
            gone = [
                job_name
                for job_name, interest in self._interests.items()
                if seen_until - interest.last_used >= self.idle_timeout
                and self._local.get(job_name, 0) == 0
            ]
            for job_name in gone:
                del self._interests[job_name]
        return sorted(gone)

    def is_interested(self, job_name: str) -> bool:
        with self._lock:
            return job_name in self._interests

    def jobs(self) -> set[str]:
        """Every job with an interest registered."""
        with self._lock:
            return set(self._interests)

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        """For status output: job -> {"local": instances here, "idle_seconds": since last use}."""
        now = self._clock()
        with self._lock:
            return {
                job_name: {
                    "local": self._local.get(job_name, 0),
                    "idle_seconds": max(0.0, now - interest.last_used),
                }
                for job_name, interest in sorted(self._interests.items())
            }


def _check_name(job_name: object) -> None:
    if not isinstance(job_name, str) or not job_name:
        raise ValueError(f"interest key must be a non-empty string, got {job_name!r}")
