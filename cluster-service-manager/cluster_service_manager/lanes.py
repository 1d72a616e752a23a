"""Work that must wait for the root: one FIFO lane per key, a bounded pool of workers.

A lane (one per node, one per job for root updates) runs its steps one at a time, in
submission order; different lanes run in parallel on at most `workers` threads, so a
slow root delays only the lanes that wait for it. A step may return a follow-up step,
which runs next and replaces it. A step that raises one of the `retryable`
exceptions (the root is unavailable) stays at the head of its lane and is tried again
with exponential backoff, until it succeeds or is older than `max_age`; steps must
therefore be idempotent. A step that raises one of the `final` exceptions (the root
refused, or does not know the job) is dropped with a warning naming it. Any other
exception is a bug: it is logged with its traceback and the step dropped. What a
step does is the caller's business.

With a `journal`, a step that is `Recorded` (it carries a plain-data description of
itself) is written to the journal while it waits or runs, under its lane and in
submission order, and deleted when it is done, dropped or expired; a follow-up that
is `Recorded` replaces its item's entry in place. So work still waiting when the process
stops survives it: `submit(..., journal_id=...)` queues a step rebuilt from a stored
entry without writing it again (see `root_work.replay`).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from oakestra_net.log import get_logger

log = get_logger(__name__)

Step = Callable[[], Optional["Step"]]


@dataclass(frozen=True)
class Recorded:
    """A step with a plain-data `record` of what it does, so it can be rebuilt later."""

    record: dict
    run: Step

    def __call__(self) -> Step | None:
        return self.run()


class Journal(Protocol):
    def add(self, lane: Hashable, what: str, record: dict, barrier: bool) -> Any: ...

    def replace(self, entry_id: Any, record: dict) -> None: ...

    def remove(self, entry_id: Any) -> None: ...


@dataclass
class _Item:
    what: str
    step: Step
    created: float
    barrier: bool
    attempts: int = 0
    journal_id: Any = None


@dataclass
class _Counters:
    done: int = 0
    retried: int = 0
    expired: int = 0
    failed: int = 0
    rejected: int = 0


class Lanes:
    def __init__(
        self,
        *,
        workers: int = 8,
        retryable: tuple[type[BaseException], ...] = (),
        final: tuple[type[BaseException], ...] = (),
        max_age: float = 600.0,
        max_per_lane: int = 10_000,
        min_delay: float = 0.25,
        max_delay: float = 5.0,
        name: str = "lanes",
        clock: Callable[[], float] = time.monotonic,
        journal: Journal | None = None,
    ) -> None:
        if workers < 1 or max_per_lane < 1:
            raise ValueError(f"{name}: workers and max_per_lane must be >= 1")
        self.name = name
        self.workers = workers
        self.retryable = retryable
        self.final = final
        self.max_age = max_age
        self.max_per_lane = max_per_lane
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.clock = clock
        self.journal = journal
        self.counters = _Counters()
        self._lanes: dict[Hashable, deque[_Item]] = {}
        self._barriers: dict[Hashable, int] = {}
        self._running: set[Hashable] = set()
        self._ready: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # workers wait here for a due lane
        # `wait_idle` waits here: a finished step used to wake every idle worker (a tenth
        # of the cluster's CPU per forwarded table query), now only idle-waiters
        self._idle = threading.Condition(lock)
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._last_reject_log = 0.0
        self._unjournaling = 0  # finished items whose journal entry is not deleted yet

    # -- public -------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._threads:
                return
            self._stopping = False
            for index in range(self.workers):
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}-{index}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the workers after their current step; queued steps are abandoned."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def submit(
        self,
        key: Hashable,
        what: str,
        step: Step,
        *,
        barrier: bool = True,
        journal_id: Any = None,
    ) -> bool:
        """Queue `step` at the end of lane `key`; False (and a warning) if the lane is full.

        A step that is no `barrier` does not make the lane `busy`. A `Recorded` step is
        journaled, unless `journal_id` names the entry it was rebuilt from.
        """
        with self._cond:
            lane = self._lanes.setdefault(key, deque())
            if len(lane) >= self.max_per_lane:
                self.counters.rejected += 1
                self._log_rejected(key, what)
                return False
            if journal_id is None and self.journal is not None and isinstance(step, Recorded):
                journal_id = self.journal.add(key, what, step.record, barrier)
            lane.append(_Item(what, step, self.clock(), barrier, journal_id=journal_id))
            if barrier:
                self._barriers[key] = self._barriers.get(key, 0) + 1
            if len(lane) == 1 and key not in self._running:
                self._schedule(key, self.clock())
            return True

    def busy(self, key: Hashable) -> bool:
        """Whether lane `key` has barrier steps queued or running."""
        with self._cond:
            return key in self._barriers

    def pending(self) -> int:
        with self._cond:
            return sum(len(lane) for lane in self._lanes.values())

    def wait_idle(self, timeout: float) -> bool:
        """Whether every lane became empty, and the journal with it, within `timeout`
        seconds (for tests and shutdown)."""
        with self._cond:
            return self._idle.wait_for(lambda: not self._lanes and not self._unjournaling, timeout)

    # -- workers ------------------------------------------------------------------------

    def _schedule(self, key: Hashable, due: float) -> None:
        heapq.heappush(self._ready, (due, next(self._seq), key))
        self._cond.notify()

    def _next_key(self) -> Hashable | None:
        """Block until a lane is due; None when stopping."""
        with self._cond:
            while not self._stopping:
                if self._ready:
                    due, _seq, key = self._ready[0]
                    wait = due - self.clock()
                    if wait <= 0:
                        heapq.heappop(self._ready)
                        self._running.add(key)
                        return key
                    self._cond.wait(min(wait, 1.0))
                else:
                    self._cond.wait()
            return None

    def _work(self) -> None:
        while (key := self._next_key()) is not None:
            with self._cond:
                item = self._lanes[key][0]
            outcome = self._run(key, item)
            with self._cond:
                self._running.discard(key)
                finished = self._finish(key, item, outcome)
                unjournal = finished and item.journal_id is not None and self.journal is not None
                if unjournal:
                    self._unjournaling += 1
                self._idle.notify_all()
            if unjournal:
                try:
                    self._unjournal(item.journal_id)
                finally:
                    with self._cond:
                        self._unjournaling -= 1
                        self._idle.notify_all()

    def _run(self, key: Hashable, item: _Item) -> str:
        try:
            follow_up = item.step()
            while follow_up is not None:
                item.step = follow_up
                self._journal_follow_up(key, item)
                follow_up = follow_up()
        except self.retryable as err:
            item.attempts += 1
            if item.attempts == 1:
                log.info(
                    "waiting for the root, will retry",
                    lane=str(key),
                    what=item.what,
                    reason=str(err),
                )
            return "retry"
        except self.final as err:
            log.warning("step dropped", lane=str(key), what=item.what, reason=str(err))
            return "failed"
        except Exception:
            log.exception("step failed, dropped", lane=str(key), what=item.what)
            return "failed"
        if item.attempts:
            log.info("done after retries", lane=str(key), what=item.what, attempts=item.attempts)
        return "done"

    def _journal_follow_up(self, key: Hashable, item: _Item) -> None:
        """A `Recorded` follow-up takes over its item's journal entry (and its place)."""
        if self.journal is None or not isinstance(item.step, Recorded):
            return
        if item.journal_id is None:
            item.journal_id = self.journal.add(key, item.what, item.step.record, item.barrier)
        else:
            self.journal.replace(item.journal_id, item.step.record)

    def _unjournal(self, entry_id: Any) -> None:
        try:
            self.journal.remove(entry_id)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - the entry runs again after a restart: harmless
            log.exception("journal entry not removed", entry=str(entry_id))

    def _finish(self, key: Hashable, item: _Item, outcome: str) -> bool:
        """Retry the item later, or take it off its lane (True)."""
        lane = self._lanes[key]
        now = self.clock()
        if outcome == "retry" and now - item.created <= self.max_age:
            self.counters.retried += 1
            delay = min(self.min_delay * 2 ** (item.attempts - 1), self.max_delay)
            self._schedule(key, now + delay)
            return False
        if outcome == "retry":
            self.counters.expired += 1
            log.warning(
                "gave up waiting for the root, step dropped",
                lane=str(key),
                what=item.what,
                attempts=item.attempts,
                max_age=self.max_age,
            )
        elif outcome == "failed":
            self.counters.failed += 1
        else:
            self.counters.done += 1
        lane.popleft()
        if item.barrier:
            self._barriers[key] -= 1
            if not self._barriers[key]:
                del self._barriers[key]
        if lane:
            self._schedule(key, now)
        else:
            del self._lanes[key]
        return True

    def _log_rejected(self, key: Hashable, what: str) -> None:
        now = time.monotonic()
        if now - self._last_reject_log >= 1.0:
            self._last_reject_log = now
            log.warning(
                "lane full, step dropped",
                lane=str(key),
                what=what,
                max_per_lane=self.max_per_lane,
                rejected_total=self.counters.rejected,
            )
