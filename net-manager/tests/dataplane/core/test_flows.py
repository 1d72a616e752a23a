"""flows.py: the bounded, expiring flow table and fragment map, with a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_address

import pytest

from net_manager.dataplane.core.flows import FlowKey, FlowTable, FragmentMap

CLIENT = ip_address("10.18.0.2").packed
SERVICE = ip_address("10.30.1.30").packed
SERVER_NS = ip_address("10.18.0.66").packed
SERVER_INSTANCE = ip_address("10.30.0.6").packed
OTHER_NS = ip_address("10.18.0.67").packed


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Flow:
    key: FlowKey
    reverse_key: FlowKey
    endpoint_ip: bytes
    last_used: float = 0.0
    owner: str = "client"
    note: str = field(default="", compare=False)


def flow(sport: int, endpoint_ip: bytes = SERVER_NS, last_used: float = 1000.0) -> Flow:
    return Flow(
        (6, CLIENT, sport, SERVICE, 443),
        (6, CLIENT, sport, SERVER_INSTANCE, 443),
        endpoint_ip,
        last_used,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_flows_are_found_by_key_and_by_reply_key(clock: FakeClock) -> None:
    table: FlowTable[Flow] = FlowTable(clock=clock)
    f = flow(34278)
    table.add(f)
    assert len(table) == 1
    assert table.get((6, CLIENT, 34278, SERVICE, 443)) is f
    assert table.get_reverse((6, CLIENT, 34278, SERVER_INSTANCE, 443)) is f
    assert table.get((6, CLIENT, 34279, SERVICE, 443)) is None
    assert table.get_reverse((17, CLIENT, 34278, SERVER_INSTANCE, 443)) is None


def test_idle_flows_expire_with_the_clock(clock: FakeClock) -> None:
    table: FlowTable[Flow] = FlowTable(idle_timeout=60, clock=clock)
    idle, busy = flow(1), flow(2)
    table.add(idle)
    table.add(busy)
    clock.now += 30
    busy.last_used = clock.now  # the translator refreshes last_used on every packet
    clock.now += 30
    assert table.expire() == 0  # exactly 60 s idle: still kept
    clock.now += 0.5
    assert table.expire() == 1
    assert table.get(idle.key) is None and table.get_reverse(idle.reverse_key) is None
    assert table.get(busy.key) is busy
    assert table.expire(now=clock.now + 31) == 1  # an explicit now wins over the clock
    assert len(table) == 0


def test_purge_endpoint_removes_only_flows_to_that_instance(clock: FakeClock) -> None:
    table: FlowTable[Flow] = FlowTable(clock=clock)
    gone, kept = flow(1, SERVER_NS), flow(2, OTHER_NS)
    table.add(gone)
    table.add(kept)
    assert table.purge_endpoint("10.18.0.66") == 1
    assert table.get(gone.key) is None and table.get_reverse(gone.reverse_key) is None
    assert table.get(kept.key) is kept
    assert table.purge_endpoint("fc00::66") == 0


def test_purge_endpoint_rejects_a_non_address(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="'nonsense'"):
        FlowTable(clock=clock).purge_endpoint("nonsense")


def test_a_full_table_says_so_and_refuses_more(clock: FakeClock) -> None:
    table: FlowTable[Flow] = FlowTable(max_flows=2, clock=clock)
    table.add(flow(1))
    assert not table.full
    table.add(flow(2))
    assert table.full
    with pytest.raises(OverflowError, match="2 flows"):
        table.add(flow(3))
    table.add(flow(2, OTHER_NS))  # replacing a flow with the same key is fine
    assert len(table) == 2 and table.get(flow(2).key).endpoint_ip == OTHER_NS  # type: ignore[union-attr]


def test_replies_shared_by_two_flows_go_to_the_newest_and_survive_the_oldest(
    clock: FakeClock,
) -> None:
    table: FlowTable[Flow] = FlowTable(clock=clock)
    older = flow(1)
    newer = Flow((6, CLIENT, 1, b"\x0a\x1e\x01\x1f", 443), older.reverse_key, SERVER_NS, 1000.0)
    table.add(older)
    table.add(newer)
    assert table.get_reverse(older.reverse_key) is newer
    table.remove(older)
    assert table.get_reverse(older.reverse_key) is newer
    assert table.get(newer.key) is newer


def test_retain_keeps_what_the_predicate_accepts(clock: FakeClock) -> None:
    table: FlowTable[Flow] = FlowTable(clock=clock)
    for sport in range(10):
        table.add(flow(sport))
    assert table.retain(lambda f: f.key[2] % 2 == 0) == 5
    assert [sport for sport in range(10) if table.get(flow(sport).key)] == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("kwargs", [{"max_flows": 0}, {"idle_timeout": 0}])
def test_flow_table_rejects_silly_bounds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="flow table"):
        FlowTable(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- fragment map


def test_fragment_entries_are_found_until_their_deadline() -> None:
    fragments: FragmentMap[str] = FragmentMap(timeout=5)
    fragments.record("a", "flow-a", now=10)
    assert fragments.find("a", now=15) == ("flow-a", 15)
    assert fragments.find("b", now=10) is None
    assert fragments.find("a", now=15.1) is None
    assert len(fragments) == 0


def test_a_stored_none_is_told_apart_from_unknown() -> None:
    fragments: FragmentMap[str | None] = FragmentMap()
    fragments.record("server side", None, now=0)
    assert fragments.find("server side", now=1) == (None, 5)
    assert fragments.find("unknown", now=1) is None


def test_a_full_fragment_map_forgets_the_oldest_datagram() -> None:
    fragments: FragmentMap[int] = FragmentMap(max_entries=3, timeout=5)
    for n in range(3):
        fragments.record(n, n, now=n)
    fragments.record(0, 0, now=3)  # a duplicate first fragment: now the newest
    fragments.record(3, 3, now=4)
    assert len(fragments) == 3
    assert fragments.find(1, now=4) is None
    assert [fragments.find(n, now=4) is not None for n in (0, 2, 3)] == [True, True, True]


def test_fragment_expiry_drops_only_stale_entries() -> None:
    fragments: FragmentMap[int] = FragmentMap(timeout=5)
    for n in range(4):
        fragments.record(n, n, now=n)
    assert fragments.expire(now=6.5) == 2
    assert fragments.find(0, now=6.5) is None and fragments.find(2, now=6.5) == (2, 7)
    assert fragments.expire(now=100) == 2 and len(fragments) == 0


def test_fragment_map_rejects_silly_bounds() -> None:
    with pytest.raises(ValueError, match="fragment map"):
        FragmentMap(max_entries=0)
