"""Interest registry: 10 s idle expiry, kept while used or deployed here."""

from __future__ import annotations

import threading

import pytest

from net_manager.control.services.interests import Interests

JOB = "app.ns.svc.ns"
OTHER = "app.ns.other.ns"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def interests(clock: FakeClock) -> Interests:
    return Interests(clock=clock)


def test_add_remote_is_new_only_once(interests: Interests) -> None:
    assert interests.add_remote(JOB) is True
    assert interests.add_remote(JOB) is False
    assert interests.is_interested(JOB)
    assert not interests.is_interested(OTHER)


def test_idle_interest_expires_after_ten_seconds(interests: Interests, clock: FakeClock) -> None:
    interests.add_remote(JOB)
    clock.advance(9.99)
    assert interests.expired() == []
    clock.advance(0.01)
    assert interests.expired() == [JOB]
    assert not interests.is_interested(JOB)
    assert interests.expired() == []  # removed: reported once


def test_expired_accepts_an_explicit_now(interests: Interests, clock: FakeClock) -> None:
    interests.add_remote(JOB)
    assert interests.expired(now=clock.now + 5) == []
    assert interests.expired(now=clock.now + 10) == [JOB]


def test_use_restarts_the_idle_timer(interests: Interests, clock: FakeClock) -> None:
    interests.add_remote(JOB)
    for _ in range(5):
        clock.advance(8)
        interests.mark_used(JOB)
        assert interests.expired() == []
    clock.advance(10)
    assert interests.expired() == [JOB]


def test_adding_again_counts_as_use(interests: Interests, clock: FakeClock) -> None:
    interests.add_remote(JOB)
    clock.advance(8)
    interests.add_remote(JOB)
    clock.advance(8)
    assert interests.expired() == []


def test_mark_used_of_unknown_job_is_ignored(interests: Interests) -> None:
    interests.mark_used(JOB)
    assert not interests.is_interested(JOB)
    assert interests.snapshot() == {}


def test_job_deployed_here_never_expires(interests: Interests, clock: FakeClock) -> None:
    interests.add_remote(JOB)
    interests.set_local(JOB, 2)
    clock.advance(3600)
    assert interests.expired() == []
    assert interests.is_interested(JOB)


def test_last_local_instance_gone_starts_the_idle_timer(
    interests: Interests, clock: FakeClock
) -> None:
    interests.add_remote(JOB)
    interests.set_local(JOB, 1)
    clock.advance(3600)
    interests.set_local(JOB, 0)
    clock.advance(9)
    assert interests.expired() == []
    clock.advance(1)
    assert interests.expired() == [JOB]


def test_local_count_set_before_the_interest_is_kept(
    interests: Interests, clock: FakeClock
) -> None:
    interests.set_local(JOB, 1)
    assert not interests.is_interested(JOB)  # set_local does not subscribe anything
    interests.add_remote(JOB)
    clock.advance(60)
    assert interests.expired() == []


def test_each_job_expires_on_its_own(interests: Interests, clock: FakeClock) -> None:
    interests.add_remote(JOB)
    clock.advance(5)
    interests.add_remote(OTHER)
    clock.advance(5)
    assert interests.expired() == [JOB]
    clock.advance(5)
    assert interests.expired() == [OTHER]


def test_expired_jobs_are_sorted(interests: Interests, clock: FakeClock) -> None:
    for name in ("c.c.c.c", "a.a.a.a", "b.b.b.b"):
        interests.add_remote(name)
    clock.advance(10)
    assert interests.expired() == ["a.a.a.a", "b.b.b.b", "c.c.c.c"]


def test_an_expired_job_can_be_added_again(interests: Interests, clock: FakeClock) -> None:
    interests.add_remote(JOB)
    clock.advance(10)
    assert interests.expired() == [JOB]
    assert interests.add_remote(JOB) is True


def test_snapshot_reports_local_count_and_idle_time(interests: Interests, clock: FakeClock) -> None:
    interests.add_remote(JOB)
    interests.add_remote(OTHER)
    interests.set_local(OTHER, 3)
    clock.advance(4.5)
    assert interests.snapshot() == {
        OTHER: {"local": 3, "idle_seconds": 4.5},
        JOB: {"local": 0, "idle_seconds": 4.5},
    }
    assert interests.jobs() == {JOB, OTHER}


def test_a_lagging_use_report_is_waited_for(interests: Interests, clock: FakeClock) -> None:
    """Use seen by a data plane that last looked 5 s ago: idleness counts up to then."""
    interests.add_remote(JOB)
    clock.advance(12)
    assert interests.expired(lag=5) == []  # idle 7 s as far as anyone has seen
    interests.mark_used(JOB)  # the late listing saw it used after all
    clock.advance(14.99)
    assert interests.expired(lag=5) == []
    assert interests.expired(lag=4.99) == [JOB]


@pytest.mark.parametrize(("lag", "expired_after"), [(0.0, 10.0), (-3.0, 10.0), (2.5, 12.5)])
def test_a_lag_delays_expiry_by_itself_and_never_hastens_it(
    clock: FakeClock, lag: float, expired_after: float
) -> None:
    interests = Interests(clock=clock)
    interests.add_remote(JOB)
    start = clock.now
    assert interests.expired(now=start + expired_after - 0.01, lag=lag) == []
    assert interests.expired(now=start + expired_after, lag=lag) == [JOB]


def test_custom_idle_timeout(clock: FakeClock) -> None:
    interests = Interests(clock=clock, idle_timeout=2.0)
    interests.add_remote(JOB)
    clock.advance(2)
    assert interests.expired() == [JOB]


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_idle_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="idle_timeout must be > 0"):
        Interests(idle_timeout=timeout)


@pytest.mark.parametrize("count", [-1, 1.5, True, "2"])
def test_bad_local_count_names_the_job(interests: Interests, count: object) -> None:
    with pytest.raises(ValueError, match=f"local instance count of {JOB}"):
        interests.set_local(JOB, count)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", None, 3])
def test_bad_key_is_rejected(interests: Interests, name: object) -> None:
    with pytest.raises(ValueError, match="interest key must be a non-empty string"):
        interests.add_remote(name)  # type: ignore[arg-type]


def test_concurrent_adds_and_expiry_keep_every_fresh_job() -> None:
    clock = FakeClock()
    interests = Interests(clock=clock, idle_timeout=10.0)
    jobs = [f"a.b.c.s{n}" for n in range(2000)]
    errors: list[BaseException] = []

    def add_all() -> None:
        try:
            for job in jobs:
                interests.add_remote(job)
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    adder = threading.Thread(target=add_all)
    adder.start()
    while adder.is_alive():
        assert interests.expired() == []
    adder.join()
    assert errors == []
    assert interests.jobs() == set(jobs)
    clock.advance(10)
    assert interests.expired() == sorted(jobs)
