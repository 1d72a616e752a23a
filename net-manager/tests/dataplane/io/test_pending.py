"""loop.PendingPackets: the bounded queue of packets waiting for a table miss to resolve."""

from __future__ import annotations

from net_manager.dataplane.io.pending import PendingPackets


def queue(**kwargs) -> PendingPackets:
    values = {"per_ip": 3, "total": 5, "timeout": 5.0, "negative_ttl": 2.0, **kwargs}
    return PendingPackets(**values)


def test_the_first_packet_asks_for_a_resolve_the_next_ones_wait() -> None:
    pending = queue()
    assert [pending.add("10.30.1.50", b"p%d" % i, 0.0) for i in range(3)] == [
        "resolve",
        "queued",
        "queued",
    ]
    assert pending.add("10.30.1.50", b"p3", 0.0) == "queue_full"  # per service IP
    assert pending.take("10.30.1.50") == [b"p0", b"p1", b"p2"] and len(pending) == 0


def test_the_total_bound_holds_across_service_ips() -> None:
    pending = queue()
    outcomes = [pending.add(f"10.30.1.{i}", b"x", 0.0) for i in range(6)]
    assert outcomes == ["resolve"] * 5 + ["queue_full"] and len(pending) == 5


def test_unanswered_misses_expire_and_count() -> None:
    pending = queue()
    pending.add("10.30.1.50", b"a", 0.0)
    pending.add("10.30.1.50", b"b", 1.0)
    pending.add("10.30.1.51", b"c", 3.0)
    assert pending.expire(4.9) == 0
    assert pending.expire(5.0) == 2 and pending.service_ips == ["10.30.1.51"]
    assert pending.add("10.30.1.50", b"d", 5.0) == "resolve"  # asked again after a timeout


def test_not_found_drops_and_refuses_the_ip_for_a_while() -> None:
    pending = queue()
    pending.add("10.30.1.50", b"a", 0.0)
    pending.add("10.30.1.50", b"b", 0.0)
    assert pending.fail("10.30.1.50", 1.0) == 2
    assert pending.add("10.30.1.50", b"c", 2.9) == "unresolved"
    assert pending.add("10.30.1.50", b"d", 3.0) == "resolve"


def test_put_back_keeps_the_deadline() -> None:
    pending = queue()
    pending.add("10.30.1.50", b"a", 1.0)
    deadline = pending.deadline("10.30.1.50")
    pending.put_back("10.30.1.50", pending.take("10.30.1.50"), deadline)
    assert pending.deadline("10.30.1.50") == 6.0 and pending.expire(6.0) == 1
