"""Lanes: FIFO per key, parallel across keys, bounded, retrying, never stuck on a bug."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from cluster_service_manager.lanes import Lanes
from testsupport import wait_until


class Down(Exception):
    pass


class Refused(Exception):
    pass


@pytest.fixture
def make_lanes():
    made = []

    def make(**options) -> Lanes:
        options = {"retryable": (Down,), "final": (Refused,), "min_delay": 0.02, **options}
        lanes = Lanes(**options)
        lanes.start()
        made.append(lanes)
        return lanes

    yield make
    for lanes in made:
        lanes.stop()


def test_steps_of_one_lane_run_in_order(make_lanes):
    lanes = make_lanes(workers=4)
    done = []
    for n in range(200):
        lanes.submit("a", f"step {n}", lambda n=n: done.append(n))
    assert lanes.wait_idle(5)
    assert done == list(range(200))


def test_a_blocked_lane_does_not_hold_up_others(make_lanes):
    lanes = make_lanes(workers=2)
    release = threading.Event()
    done = []
    lanes.submit("slow", "blocked", release.wait)
    lanes.submit("slow", "after", lambda: done.append("slow"))
    lanes.submit("fast", "quick", lambda: done.append("fast"))
    wait_until(lambda: done == ["fast"])
    assert lanes.busy("slow") and not lanes.busy("fast")
    release.set()
    assert lanes.wait_idle(5)
    assert done == ["fast", "slow"]


def test_workers_bound_the_parallelism(make_lanes):
    lanes = make_lanes(workers=2)
    release = threading.Event()
    running = []
    for key in "abc":
        lanes.submit(key, "block", lambda k=key: (running.append(k), release.wait()))
    wait_until(lambda: len(running) == 2)
    time.sleep(0.1)
    assert len(running) == 2
    release.set()
    assert lanes.wait_idle(5)
    assert sorted(running) == ["a", "b", "c"]


def test_retryable_failure_keeps_the_step_at_the_head(make_lanes):
    lanes = make_lanes(workers=2)
    attempts = []
    done = []

    def flaky():
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise Down("root away")
        done.append("flaky")

    lanes.submit("a", "flaky", flaky)
    lanes.submit("a", "next", lambda: done.append("next"))
    lanes.submit("b", "other", lambda: done.append("other"))
    assert lanes.wait_idle(5)
    assert done.index("flaky") < done.index("next")
    assert len(attempts) == 3
    assert attempts[2] - attempts[1] >= attempts[1] - attempts[0]  # backing off
    assert lanes.counters.retried == 2 and lanes.counters.done == 3


def test_a_follow_up_replaces_its_step(make_lanes):
    lanes = make_lanes()
    calls = {"first": 0, "second": 0}

    def second():
        calls["second"] += 1
        if calls["second"] == 1:
            raise Down("not yet")

    def first():
        calls["first"] += 1
        return second

    lanes.submit("a", "two steps", first)
    assert lanes.wait_idle(5)
    assert calls == {"first": 1, "second": 2}


def test_steps_older_than_max_age_are_dropped(make_lanes, caplog):
    lanes = make_lanes(max_age=0.2, max_delay=0.05)
    done = []

    def never():
        raise Down("gone")

    lanes.submit("a", "hopeless", never)
    lanes.submit("a", "next", lambda: done.append("next"))
    assert lanes.wait_idle(5)
    assert done == ["next"]
    assert lanes.counters.expired == 1
    assert "gave up waiting for the root, step dropped" in caplog.messages


def test_final_errors_and_bugs_drop_only_that_step(make_lanes, caplog):
    lanes = make_lanes()
    done = []

    def refused():
        raise Refused("no")

    def buggy():
        raise KeyError("oops")

    lanes.submit("a", "refused", refused)
    lanes.submit("a", "buggy", buggy)
    lanes.submit("a", "fine", lambda: done.append("fine"))
    assert lanes.wait_idle(5)
    assert done == ["fine"]
    bug = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(bug) == 1 and bug[0].exc_info is not None
    assert "step dropped" in caplog.messages


def test_busy_counts_only_barriers(make_lanes):
    lanes = make_lanes()
    release = threading.Event()
    lanes.submit("a", "query", release.wait, barrier=False)
    assert not lanes.busy("a") and lanes.pending() == 1
    lanes.submit("a", "report", lambda: None)
    assert lanes.busy("a")
    release.set()
    assert lanes.wait_idle(5)
    assert not lanes.busy("a") and lanes.pending() == 0


def test_a_full_lane_rejects(make_lanes):
    lanes = make_lanes(max_per_lane=2)
    release = threading.Event()
    assert lanes.submit("a", "1", release.wait)
    assert lanes.submit("a", "2", lambda: None)
    assert not lanes.submit("a", "3", lambda: None)
    assert lanes.submit("b", "1", lambda: None)
    release.set()
    assert lanes.wait_idle(5)
    assert lanes.counters.rejected == 1


def test_invalid_options():
    with pytest.raises(ValueError, match="workers"):
        Lanes(workers=0)


class ListJournal:
    """The lanes' journal protocol over a dict, recording what happened."""

    def __init__(self) -> None:
        self.entries: dict[int, dict] = {}
        self.next_id = 0

    def add(self, lane, what, record, barrier):
        self.next_id += 1
        self.entries[self.next_id] = {"lane": lane, "record": record}
        return self.next_id

    def replace(self, entry_id, record):
        self.entries[entry_id]["record"] = record

    def remove(self, entry_id):
        del self.entries[entry_id]


def test_recorded_steps_are_journaled_until_done(make_lanes):
    from cluster_service_manager.lanes import Recorded

    journal = ListJournal()
    lanes = make_lanes(journal=journal)
    root_up = threading.Event()

    def call_root():
        if not root_up.is_set():
            raise Down("root down")

    def report():
        return Recorded({"kind": "report"}, call_root)  # a recorded follow-up

    lanes.submit("node", "message", Recorded({"kind": "message"}, report))
    lanes.submit("node", "plain", lambda: None)  # not recorded: never journaled
    wait_until(lambda: [e["record"] for e in journal.entries.values()] == [{"kind": "report"}])
    assert list(journal.entries) == [1], "the follow-up took the message's entry in place"
    root_up.set()
    assert lanes.wait_idle(5)
    assert journal.entries == {}


def test_a_replayed_entry_is_not_journaled_twice(make_lanes):
    from cluster_service_manager.lanes import Recorded

    journal = ListJournal()
    journal.entries[7] = {"lane": "node", "record": {"kind": "x"}}
    lanes = make_lanes(journal=journal)
    lanes.submit("node", "replayed", Recorded({"kind": "x"}, lambda: None), journal_id=7)
    assert lanes.wait_idle(5)
    assert journal.entries == {} and journal.next_id == 0


def test_lanes_are_idle_only_once_the_journal_entry_is_gone(make_lanes):
    """A slow store deletes a done step's entry after the lane is empty: idle waits for it."""
    from cluster_service_manager.lanes import Recorded

    class SlowRemoveJournal(ListJournal):
        def __init__(self) -> None:
            super().__init__()
            self.removing = threading.Event()
            self.release = threading.Event()

        def remove(self, entry_id):
            self.removing.set()
            self.release.wait()
            super().remove(entry_id)

    journal = SlowRemoveJournal()
    lanes = make_lanes(journal=journal)
    lanes.submit("node", "report", Recorded({"kind": "report"}, lambda: None))
    assert journal.removing.wait(5)
    assert not lanes.wait_idle(0.05), "idle while the journal still holds the entry"
    journal.release.set()
    assert lanes.wait_idle(5)
    assert journal.entries == {}
