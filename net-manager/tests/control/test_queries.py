"""Table queries: correlation by each key, coalescing, timeouts that clear the key."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from net_manager.control.services.queries import QueryTimeout, TableQueries
from oakestra_net.messages import TableQueryRequest, TableQueryResult
from testsupport import wait_until

X1 = "X.default.X1.default"
X3 = "X.default.X3.default"


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Publisher:
    """Records every request; can be told to fail."""

    def __init__(self) -> None:
        self.sent: list[TableQueryRequest] = []
        self.error: Exception | None = None
        self._lock = threading.Lock()

    def __call__(self, request: TableQueryRequest) -> None:
        if self.error is not None:
            raise self.error
        with self._lock:
            self.sent.append(request)


def result(
    app_name: str | None = X1, query_key: str = X1, addresses: tuple[str, ...] = ()
) -> TableQueryResult:
    """A cluster answer with one instance listing `addresses` as RR service IPs."""
    service_ip = [
        {"IpType": "RR", "Address": a, "Address_v6": ""}
        if "." in a
        else {"IpType": "RR", "Address": "", "Address_v6": a}
        for a in addresses
    ]
    instance = {
        "instance_number": 0,
        "instance_ip": "10.30.0.100",
        "instance_ip_v6": "fdff::64",
        "cluster_id": "c1",
        "namespace_ip": "10.18.0.2",
        "namespace_ip_v6": "fc00::2",
        "host_ip": "192.168.1.10",
        "host_port": 50103,
        "service_ip": service_ip,
    }
    return TableQueryResult.from_json(
        {"app_name": app_name, "query_key": query_key, "instance_list": [instance]}
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def publisher() -> Publisher:
    return Publisher()


@pytest.fixture
def queries(publisher: Publisher, clock: FakeClock) -> TableQueries:
    return TableQueries(publisher, clock=clock, timeout=5.0)


class Waiter:
    """A blocking query() on its own thread; `.outcome` is the result or the exception."""

    def __init__(self, call: Callable[[], TableQueryResult | None]) -> None:
        self.outcome: object = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], TableQueryResult | None]) -> None:
        try:
            self.outcome = call()
        except Exception as err:
            self.outcome = err

    def join(self) -> object:
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "query still blocked"
        return self.outcome


@pytest.fixture
def waiters(queries: TableQueries) -> Iterator[list[Waiter]]:
    started: list[Waiter] = []
    yield started
    queries.expire(now=float("inf"))  # release anything a failed test left blocked
    for waiter in started:
        waiter._thread.join(timeout=5)


def blocking(queries: TableQueries, waiters: list[Waiter], **kwargs: Any) -> Waiter:
    waiter = Waiter(lambda: queries.query(**kwargs))
    waiters.append(waiter)
    return waiter


# ---------------------------------------------------------------- requests


def test_query_by_name_publishes_the_request(
    queries: TableQueries, publisher: Publisher, waiters: list[Waiter]
) -> None:
    waiter = blocking(queries, waiters, sname=X1)
    wait_until(lambda: queries.pending_keys() == [X1])
    assert publisher.sent == [TableQueryRequest(sname=X1, sip="")]
    answer = result()
    assert queries.on_result(answer) == 1
    assert waiter.join() is answer
    assert queries.pending_keys() == []


def test_query_by_ip_sends_the_canonical_address(
    queries: TableQueries, publisher: Publisher
) -> None:
    queries.query(sip="FDFF:2000:0::1", wait=False)
    assert publisher.sent == [TableQueryRequest(sname="", sip="fdff:2000::1")]
    assert queries.pending_keys() == ["fdff:2000::1"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs a job name (sname) or a service IP (sip)"),
        ({"sname": "X1"}, "table query by name: job name must have 4 dot-separated parts"),
        ({"sip": "10.30.0"}, "table query by IP: '10.30.0' is not an IP address"),
        ({"sip": "fdff::1%eth0"}, "is not an IP address"),
    ],
)
def test_malformed_query_is_refused(
    queries: TableQueries, publisher: Publisher, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        queries.query(**kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        queries.query_async(**kwargs, callback=lambda r: None)
    assert publisher.sent == []
    assert queries.pending_keys() == []


# ---------------------------------------------------------------- correlation


def test_result_matched_by_app_name(queries: TableQueries) -> None:
    queries.query(sname=X1, wait=False)
    assert queries.on_result(result(app_name=X1, query_key="10.30.0.1")) == 1


def test_result_matched_by_query_key(queries: TableQueries) -> None:
    queries.query(sip="10.30.9.9", wait=False)
    # the cluster could not resolve the IP: app_name null, no instances, key echoed
    failed = TableQueryResult.from_json(
        {"app_name": None, "query_key": "10.30.9.9", "instance_list": []}
    )
    assert queries.on_result(failed) == 1
    assert queries.pending_keys() == []


@pytest.mark.parametrize(
    ("asked", "listed"),
    [
        ("10.30.1.30", "10.30.1.30"),
        ("fdff:2000::30", "fdff:2000::30"),
        ("fdff:2000::30", "FDFF:2000:0:0::30"),  # another spelling of the same address
        ("FDFF:2000::30", "fdff:2000::30"),
    ],
)
def test_result_matched_by_a_listed_service_address(
    queries: TableQueries, asked: str, listed: str
) -> None:
    queries.query(sip=asked, wait=False)
    answer = result(app_name=X3, query_key="something.else.entirely.x", addresses=(listed,))
    assert queries.on_result(answer) == 1


def test_one_result_resolves_every_matching_key(
    queries: TableQueries, waiters: list[Waiter]
) -> None:
    by_name = blocking(queries, waiters, sname=X1)
    by_ip = blocking(queries, waiters, sip="10.30.0.1")
    unrelated = blocking(queries, waiters, sip="10.30.0.2")
    wait_until(lambda: len(queries.pending_keys()) == 3)
    answer = result(app_name=X1, query_key="10.30.0.1", addresses=("10.30.0.1",))
    assert queries.on_result(answer) == 2
    assert by_name.join() is answer
    assert by_ip.join() is answer
    assert queries.pending_keys() == ["10.30.0.2"]
    assert queries.on_result(result(app_name=X3, query_key="10.30.0.2")) == 1
    assert unrelated.join().app_name == X3  # type: ignore[attr-defined]


def test_unmatched_result_is_ignored(queries: TableQueries) -> None:
    assert queries.on_result(result()) == 0
    queries.query(sname=X3, wait=False)
    assert queries.on_result(result(app_name=X1, query_key=X1, addresses=("10.30.0.1",))) == 0
    assert queries.pending_keys() == [X3]


# ---------------------------------------------------------------- coalescing


def test_concurrent_queries_for_one_key_publish_once(
    queries: TableQueries, publisher: Publisher, waiters: list[Waiter]
) -> None:
    start = threading.Barrier(8)

    def ask() -> TableQueryResult | None:
        start.wait()
        return queries.query(sname=X1)

    for _ in range(8):
        waiters.append(Waiter(ask))
    wait_until(lambda: queries.snapshot().get(X1, {}).get("queries") == 8, timeout=30)
    answer = result()
    assert queries.on_result(answer) == 1
    assert [waiter.join() for waiter in waiters] == [answer] * 8
    assert publisher.sent == [TableQueryRequest(sname=X1, sip="")]


def test_blocking_and_async_queries_share_one_request(
    queries: TableQueries, publisher: Publisher, waiters: list[Waiter]
) -> None:
    got: list[TableQueryResult | None] = []
    queries.query_async(sip="10.30.0.1", callback=got.append)
    waiter = blocking(queries, waiters, sip="10.30.0.1")
    queries.query(sip="10.30.0.1", wait=False)
    wait_until(lambda: queries.snapshot()["10.30.0.1"]["queries"] == 3)
    answer = result(addresses=("10.30.0.1",))
    assert queries.on_result(answer) == 1
    assert waiter.join() is answer
    assert got == [answer]
    assert len(publisher.sent) == 1


def test_snapshot_shows_pending_queries(queries: TableQueries, clock: FakeClock) -> None:
    queries.query(sname=X1, wait=False)
    queries.query_async(sname=X1, callback=lambda r: None)
    clock.now += 1.5
    queries.query(sip="10.30.0.1", wait=False)
    assert queries.snapshot() == {
        "10.30.0.1": {"queries": 1, "seconds_left": 5.0},
        X1: {"queries": 2, "seconds_left": 3.5},
    }


def test_resolved_key_publishes_again(queries: TableQueries, publisher: Publisher) -> None:
    queries.query(sname=X1, wait=False)
    queries.on_result(result())
    queries.query(sname=X1, wait=False)
    assert len(publisher.sent) == 2


# ---------------------------------------------------------------- timeouts


def test_blocking_query_times_out_and_clears_its_key(publisher: Publisher) -> None:
    queries = TableQueries(publisher, timeout=0.05)  # real clock: the wait really blocks
    with pytest.raises(QueryTimeout, match=f"no answer to table query '{X1}' within 0.05 s"):
        queries.query(sname=X1)
    assert queries.pending_keys() == []
    assert queries.on_result(result()) == 0  # late answer resolves nothing
    queries.query(sname=X1, wait=False)
    assert len(publisher.sent) == 2  # the next query asks again


def test_expire_wakes_blocked_waiters(
    queries: TableQueries, clock: FakeClock, waiters: list[Waiter]
) -> None:
    waiter = blocking(queries, waiters, sname=X1)
    wait_until(lambda: queries.pending_keys() == [X1])
    clock.now += 5
    assert queries.expire() == 1
    assert isinstance(waiter.join(), QueryTimeout)
    assert queries.on_result(result()) == 0


def test_async_query_times_out_through_expire(queries: TableQueries, clock: FakeClock) -> None:
    got: list[TableQueryResult | None] = []
    queries.query_async(sname=X1, callback=got.append)
    clock.now += 4.9
    assert queries.expire() == 0
    assert got == []
    assert queries.expire(now=clock.now + 0.1) == 1
    assert got == [None]
    assert queries.pending_keys() == []
    assert queries.on_result(result()) == 0
    assert got == [None]  # the late answer does not reach the callback


def test_coalesced_query_keeps_the_first_deadline(
    queries: TableQueries, clock: FakeClock, publisher: Publisher
) -> None:
    first: list[TableQueryResult | None] = []
    second: list[TableQueryResult | None] = []
    queries.query_async(sname=X1, callback=first.append)
    clock.now += 3
    queries.query_async(sname=X1, callback=second.append)
    clock.now += 2
    assert queries.expire() == 1
    assert first == second == [None]
    assert len(publisher.sent) == 1


def test_fire_and_forget_query_expires(queries: TableQueries, clock: FakeClock) -> None:
    assert queries.query(sname=X1, wait=False) is None
    clock.now += 5
    assert queries.expire() == 1
    assert queries.pending_keys() == []


def test_async_query_resolved_by_result(queries: TableQueries) -> None:
    got: list[TableQueryResult | None] = []
    queries.query_async(sip="10.30.1.30", callback=got.append)
    answer = result(app_name=X3, query_key="10.30.1.30", addresses=("10.30.1.30",))
    assert queries.on_result(answer) == 1
    assert got == [answer]
    assert queries.expire(now=10_000) == 0


# ---------------------------------------------------------------- failures


def test_publish_failure_fails_the_query_and_clears_the_key(
    queries: TableQueries, publisher: Publisher
) -> None:
    publisher.error = ConnectionError("broker down")
    with pytest.raises(QueryTimeout, match=f"table query '{X1}' could not be sent: broker down"):
        queries.query(sname=X1)
    assert queries.pending_keys() == []
    publisher.error = None
    queries.query(sname=X1, wait=False)
    assert publisher.sent == [TableQueryRequest(sname=X1, sip="")]


def test_publish_failure_of_async_query_calls_back_with_none(
    queries: TableQueries, publisher: Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    publisher.error = ConnectionError("broker down")
    got: list[TableQueryResult | None] = []
    with caplog.at_level(logging.WARNING, logger="net_manager.control.services.queries"):
        queries.query_async(sip="10.30.0.1", callback=got.append)
    assert got == [None]
    assert queries.pending_keys() == []
    assert "table query not sent" in caplog.text


def test_too_many_pending_keys_fail_at_once(publisher: Publisher, clock: FakeClock) -> None:
    queries = TableQueries(publisher, clock=clock, max_pending=2)
    queries.query(sip="10.30.0.1", wait=False)
    queries.query(sip="10.30.0.2", wait=False)
    with pytest.raises(QueryTimeout, match="refused: 2 pending"):
        queries.query(sip="10.30.0.3")
    got: list[TableQueryResult | None] = []
    queries.query_async(sip="10.30.0.3", callback=got.append)
    assert got == [None]
    queries.query_async(sip="10.30.0.1", callback=got.append)  # joins: no new key needed
    assert got == [None]
    assert len(publisher.sent) == 2


def test_failing_callback_is_logged_and_others_still_run(
    queries: TableQueries, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[TableQueryResult | None] = []

    def broken(_result: TableQueryResult | None) -> None:
        raise RuntimeError("boom")

    queries.query_async(sname=X1, callback=broken)
    queries.query_async(sname=X1, callback=got.append)
    answer = result()
    with caplog.at_level(logging.ERROR, logger="net_manager.control.services.queries"):
        assert queries.on_result(answer) == 1
    assert got == [answer]
    assert "table query callback failed" in caplog.text
    assert "boom" in caplog.text


@pytest.mark.parametrize(("timeout", "max_pending"), [(0, 10), (-1, 10), (5, 0)])
def test_bad_settings_are_refused(timeout: float, max_pending: int) -> None:
    with pytest.raises(ValueError, match="table query"):
        TableQueries(Publisher(), timeout=timeout, max_pending=max_pending)


# ---------------------------------------------------------------- lost answers


def test_an_unanswered_request_is_sent_again_with_growing_gaps_until_its_deadline(
    queries: TableQueries, publisher: Publisher, clock: FakeClock
) -> None:
    queries.query_async(sname=X1, callback=lambda _r: None)
    sent_at = [clock.now]
    while clock.now < 510:
        clock.now += 0.25
        if queries.retry():
            sent_at.append(clock.now)
    gaps = [round(b - a, 2) for a, b in zip(sent_at, sent_at[1:], strict=False)]
    assert gaps == [0.5, 1.0, 2.0]  # then the 5 s deadline: no resend after it
    assert len(publisher.sent) == 4
    assert all(request == TableQueryRequest(sname=X1, sip="") for request in publisher.sent)


def test_resend_pending_sends_every_open_request_once(
    queries: TableQueries, publisher: Publisher
) -> None:
    queries.query_async(sname=X1, callback=lambda _r: None)
    queries.query_async(sip="10.30.0.9", callback=lambda _r: None)
    publisher.sent.clear()
    assert queries.resend_pending() == 2
    assert sorted(r.sname or r.sip for r in publisher.sent) == ["10.30.0.9", X1]
    queries.on_result(result(app_name=X1, query_key=X1))
    publisher.sent.clear()
    assert queries.resend_pending() == 1
    assert publisher.sent == [TableQueryRequest(sname="", sip="10.30.0.9")]


def test_a_query_until_answered_is_asked_again_after_each_timeout_with_bounded_backoff(
    queries: TableQueries, publisher: Publisher, clock: FakeClock
) -> None:
    queries.query_until_answered(sname=X1)
    starts = []
    for _ in range(400):  # 100 s of housekeeping ticks
        clock.now += 0.25
        queries.expire()
        before = len(queries.pending_keys())
        queries.retry()
        if not before and queries.pending_keys():
            starts.append(clock.now)
    gaps = [round(b - a, 2) for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[:4] == [6.0, 7.0, 9.0, 13.0]  # 5 s deadline + 0.5, 1, 2, 4 s of backoff
    assert set(gaps[4:]) == {13.0}  # bounded: 5 s + 8 s
    assert queries.persistent_keys() == [X1]

    queries.on_result(result(app_name=X1, query_key=X1))
    assert queries.persistent_keys() == [] and queries.pending_keys() == []
    sent = len(publisher.sent)
    clock.now += 60
    queries.expire()
    queries.retry()
    assert len(publisher.sent) == sent


def test_a_query_until_answered_stops_when_no_longer_wanted(
    queries: TableQueries, publisher: Publisher, clock: FakeClock
) -> None:
    wanted = [True]
    queries.query_until_answered(sname=X1, wanted=lambda: wanted[0])
    queries.query_until_answered(sname=X1)  # the same key again: nothing new
    assert len(publisher.sent) == 1
    wanted[0] = False
    clock.now += 5
    queries.expire()
    clock.now += 60
    queries.retry()
    assert queries.persistent_keys() == [] and queries.pending_keys() == []
    assert len(publisher.sent) == 1
