"""How often conntrack is listed (pace.py): listing + parse within 10 % of one core."""

from __future__ import annotations

import pytest

from net_manager.dataplane.kernel.pace import BLIND_GRACE, MAX_INTERVAL, ListingPace


def rounds_until_due(pace: ListingPace) -> int:
    """Poll rounds until the next listing, that one included."""
    for rounds in range(1, 10_000):
        if pace.due():
            return rounds
    raise AssertionError("never due")


def test_a_cheap_listing_runs_every_poll_round() -> None:
    pace = ListingPace(1.0)
    for started in range(5):
        assert pace.due()
        pace.listed(float(started), 0.02)
    assert (pace.interval, pace.rounds_skipped, pace.listings) == (1.0, 0, 5)


@pytest.mark.parametrize(
    ("cost", "interval", "rounds"),
    [
        (0.0, 1.0, 1),
        (0.1, 1.0, 1),  # exactly 10 % of the poll interval
        (0.1001, 1.001, 2),
        (0.18, 1.8, 2),  # 20,000 DNATed connections, measured
        (0.3, 3.0, 3),  # not 4 from float rounding
        (1.0, 10.0, 10),
        (2.5, 25.0, 25),
    ],
)
def test_the_next_listing_waits_ten_times_the_last_cost(
    cost: float, interval: float, rounds: int
) -> None:
    pace = ListingPace(1.0)
    pace.listed(0.0, cost)
    assert pace.interval == pytest.approx(interval)
    assert rounds_until_due(pace) == rounds
    assert pace.rounds_skipped == rounds - 1


@pytest.mark.parametrize("cost", [0.0, 0.05, 0.1, 0.18, 0.37, 1.0, 2.9])
@pytest.mark.parametrize("poll", [0.25, 1.0, 3.0])
def test_listing_never_takes_more_than_its_share_of_a_core(cost: float, poll: float) -> None:
    pace = ListingPace(poll, share=0.1)
    pace.listed(0.0, cost)
    seconds_between = rounds_until_due(pace) * poll  # poll rounds start >= poll apart
    assert cost / seconds_between <= 0.1 + 1e-9
    assert seconds_between < max(poll, cost / 0.1) + poll  # and not much slower than that


def test_the_pace_follows_the_last_cost_back_down() -> None:
    pace = ListingPace(1.0)
    pace.listed(0.0, 0.5)
    assert rounds_until_due(pace) == 5
    pace.listed(5.0, 0.01)  # the tenant's connections are gone
    assert pace.interval == 1.0 and rounds_until_due(pace) == 1


def test_a_failed_listing_paces_like_any_other() -> None:
    pace = ListingPace(1.0)
    pace.begin()
    pace.failed(0.4)  # conntrack ran 0.4 s, then failed: it cost as much
    assert rounds_until_due(pace) == 4
    assert (pace.listings, pace.failures) == (0, 1)


@pytest.mark.parametrize("cost", [3.5, 10.0, 60.0])
def test_use_is_never_looked_at_more_than_the_cap_apart(cost: float) -> None:
    pace = ListingPace(1.0)
    pace.listed(0.0, cost)  # a slow listing (or a timeout) would space them 10 x cost
    assert pace.interval == MAX_INTERVAL
    assert rounds_until_due(pace) == MAX_INTERVAL


def test_a_failed_listing_leaves_the_use_since_the_last_good_one_unseen() -> None:
    pace = ListingPace(1.0)
    pace.listed(100.0, 0.05)
    pace.begin()
    pace.failed(0.05)  # at the poll pace: still, nothing was seen since 100
    assert pace.lag(102.5) == pytest.approx(2.5)
    pace.begin()
    pace.failed(0.05)
    assert pace.lag(100.0 + BLIND_GRACE - 0.5) == pytest.approx(BLIND_GRACE - 0.5)
    assert pace.lag(100.0 + BLIND_GRACE) == 0.0  # blind for too long: interests may go
    pace.begin()
    pace.listed(170.0, 0.05)
    assert pace.lag(170.5) == 0.0


def test_a_failure_before_any_good_listing_keeps_nothing() -> None:
    pace = ListingPace(1.0)
    pace.begin()
    pace.failed(0.05)
    assert pace.lag(5.0) == 0.0


def test_use_is_unseen_while_a_listing_runs() -> None:
    pace = ListingPace(1.0)
    pace.listed(100.0, 0.05)
    pace.begin()  # at 101, and it takes a while
    assert pace.lag(101.8) == pytest.approx(1.8)
    # at the poll pace a listing would be overdue after 3 s; this one runs up to its timeout
    assert pace.lag(110.5) == pytest.approx(10.5)
    assert pace.lag(100.0 + BLIND_GRACE) == 0.0
    pace.listed(101.0, 0.05)
    assert pace.lag(101.8) == 0.0


def test_use_is_late_only_while_listing_is_slower_than_the_poll() -> None:
    pace = ListingPace(1.0)
    assert pace.lag(100.0) == 0.0  # never listed
    pace.listed(100.0, 0.05)
    assert pace.lag(100.9) == 0.0  # at the poll pace: the idle rule as before
    pace.listed(101.0, 0.4)  # next listing at 105
    assert pace.lag(101.0) == 0.0
    assert pace.lag(104.5) == pytest.approx(3.5)  # since the last listing began
    assert pace.lag(100.0) == 0.0  # never negative
    pace.listed(105.0, 0.05)
    assert pace.lag(105.5) == 0.0


def test_nothing_to_list_lists_at_once_when_served_again() -> None:
    pace = ListingPace(1.0)
    pace.listed(0.0, 2.0)  # 20 s until the next one
    pace.nothing_to_list()  # the kernel serves nothing any more
    assert pace.due()  # served again: the first round lists
    # what it served until then may have been used since the last listing
    assert pace.lag(5.0) == 5.0


def test_a_listing_overdue_by_a_whole_interval_ends_the_lag() -> None:
    pace = ListingPace(1.0)
    pace.listed(0.0, 0.5)  # next in 5 s
    assert pace.lag(10.999) == pytest.approx(10.999)  # late rounds, a slow listing: tolerated
    assert pace.lag(11.0) == 0.0  # 2 intervals + a round: nobody is looking any more
    pace.listed(12.0, 0.5)
    assert pace.lag(13.0) == 1.0


def test_counters_for_status() -> None:
    pace = ListingPace(1.0)
    pace.listed(0.0, 0.25)
    rounds_until_due(pace)
    assert (pace.listings, pace.rounds_skipped, pace.cost, pace.interval) == (1, 2, 0.25, 2.5)


@pytest.mark.parametrize("poll", [0.0, -1.0, float("nan")])
def test_a_poll_interval_must_be_positive(poll: float) -> None:
    with pytest.raises(ValueError, match="poll interval must be > 0"):
        ListingPace(poll)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5, float("nan")])
def test_the_share_is_a_fraction_of_a_core(share: float) -> None:
    with pytest.raises(ValueError, match="listing share must be in"):
        ListingPace(1.0, share=share)


def test_a_negative_cost_from_a_clock_step_counts_as_none() -> None:
    pace = ListingPace(1.0)
    pace.listed(0.0, -3.0)
    assert pace.interval == 1.0 and pace.due()
