"""loop.PendingPackets: the bounded queue of packets waiting for a table miss to resolve."""

from __future__ import annotations

from net_manager.dataplane.io.pending import PendingPackets, RateLimiter


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


def test_new_addresses_are_rate_limited_per_owner() -> None:
    """3,000 packets to unknown service IPs from one container: a handful of resolves."""
    pending = queue(per_ip=64, total=4096, limiter=RateLimiter(rate=5, burst=10))
    outcomes = [
        pending.add(f"10.30.{i // 250}.{i % 250}", b"x", i / 3000, owner="c1") for i in range(3000)
    ]
    assert outcomes.count("resolve") <= 15
    assert outcomes.count("miss_rate_limited") == 3000 - outcomes.count("resolve")
    # another container is not held up, and packets for a pending IP still queue
    assert pending.add("10.30.200.1", b"y", 1.0, owner="c2") == "resolve"
    assert pending.add("10.30.0.0", b"z", 1.0, owner="c1") == "queued"


def test_the_bucket_refills_with_time() -> None:
    limiter = RateLimiter(rate=2, burst=2)
    assert [limiter.allow("c1", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("c1", 0.5) and not limiter.allow("c1", 0.5)
    assert limiter.allow("c1", 100.0) and limiter.allow("c1", 100.0)
    assert not limiter.allow("c1", 100.0)  # never more than the burst


def test_the_byte_budget_bounds_memory() -> None:
    pending = queue(per_ip=64, total=100, total_bytes=3000)
    assert pending.add("10.30.1.50", bytes(1500), 0.0) == "resolve"
    assert pending.add("10.30.1.50", bytes(1500), 0.0) == "queued"
    assert pending.add("10.30.1.50", bytes(1), 0.0) == "queue_full"
    assert pending.bytes == 3000
    pending.take("10.30.1.50")
    assert pending.bytes == 0 and len(pending) == 0


def test_items_other_than_bytes_are_sized_by_size_of() -> None:
    pending: PendingPackets[tuple[str, bytes]] = PendingPackets(
        per_ip=4, total=4, timeout=5, negative_ttl=2, size_of=lambda item: len(item[1])
    )
    pending.add("10.30.0.2", ("198.18.0.1", bytes(100)), 0.0)
    assert pending.bytes == 100 and pending.take("10.30.0.2") == [("198.18.0.1", bytes(100))]


def test_an_overall_limit_holds_whatever_the_number_of_owners() -> None:
    """Spoofed underlay addresses are cheap: each one's own bucket is not enough."""
    pending = queue(
        per_ip=4,
        total=100_000,
        limiter=RateLimiter(rate=20, burst=50),
        overall=RateLimiter(rate=100, burst=200),
    )
    outcomes = [
        pending.add(f"10.30.{i // 250}.{i % 250}", b"x", 0.0, owner=f"198.18.{i // 250}.{i % 250}")
        for i in range(10_000)
    ]
    assert outcomes.count("resolve") == 200
