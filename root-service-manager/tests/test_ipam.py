"""Address allocation: atomic under concurrency, recycling only after the cursor went round."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from oakestra_net.addressing import Pool, PoolExhausted, nth, pool_size
from root_service_manager import ipam
from root_service_manager.ipam import AddressTaken, Allocator


def test_2000_instance_ips_from_16_threads_are_distinct(db):
    allocator = Allocator(db)
    owner = {"kind": "instance", "job_name": "a.b.c.d"}
    with ThreadPoolExecutor(16) as pool:
        addresses = list(pool.map(lambda _: allocator.reserve(Pool.SERVICE_V4, owner), range(2000)))
    assert len(set(addresses)) == 2000
    assert allocator.used(Pool.SERVICE_V4) == 2000


def test_freed_address_comes_back_only_after_the_cursor_went_round(db):
    allocator = Allocator(db)
    owner = {"kind": "rr", "job_name": "a.b.c.d"}
    first = allocator.reserve(Pool.SERVICE_V4, owner)
    assert first == nth(Pool.SERVICE_V4, 0)
    allocator.release(Pool.SERVICE_V4, first)
    second = allocator.reserve(Pool.SERVICE_V4, owner)
    assert second != first
    # move the cursor to the pool's end, as if 65,531 more addresses had been handed out;
    # a new process (allocator) takes its positions from there
    db["ip_cursors"].update_one(
        {"_id": "service_v4"}, {"$set": {"next": pool_size(Pool.SERVICE_V4) - 1}}
    )
    allocator = Allocator(db)
    last = allocator.reserve(Pool.SERVICE_V4, owner)
    assert last == nth(Pool.SERVICE_V4, pool_size(Pool.SERVICE_V4) - 1)
    assert allocator.reserve(Pool.SERVICE_V4, owner) == first  # wrapped: the freed one
    assert allocator.reserve(Pool.SERVICE_V4, owner) == nth(Pool.SERVICE_V4, 2)  # second is held


def test_specific_address_is_exclusive(db):
    allocator = Allocator(db)
    mine = {"kind": "rr", "job_name": "a.b.c.d"}
    assert allocator.reserve_specific(Pool.SERVICE_V4, "10.30.1.30", mine) == "10.30.1.30"
    assert allocator.reserve_specific(Pool.SERVICE_V4, "10.30.1.30", mine) == "10.30.1.30"
    with pytest.raises(AddressTaken, match="a.b.c.d"):
        allocator.reserve_specific(Pool.SERVICE_V4, "10.30.1.30", {"kind": "rr", "job_name": "x"})
    # the cursor skips an address somebody chose
    db["ip_cursors"].insert_one({"_id": "service_v4", "next": 1 * 256 + 29})
    assert allocator.reserve(Pool.SERVICE_V4, mine) == "10.30.1.31"


def _reserved_in_bulk(db, pool: Pool, positions: range, owner: dict) -> set[str]:
    """What `reserve_specific` stores for each position, in one insert_many (fast on a
    MongoDB-wire server, where 12,000 single reservations take minutes)."""
    addresses = {nth(pool, n) for n in positions}
    db["ip_reservations"].insert_many(
        {"_id": ipam._reservation_id(pool, nth(pool, n)), "pool": str(pool),
         "slot": ipam._slot(n), "owner": owner}
        for n in positions
    )  # fmt: skip
    return addresses


@pytest.mark.slow  # 2,962 reservations after 12,397 chosen ones, one by one: 2-5 s
def test_exhaustion_is_reported_only_when_every_address_is_taken(db):
    """User-chosen runs ahead of the cursor; allocation goes on until the pool is truly full."""
    allocator = Allocator(db)
    size = pool_size(Pool.SUBNET_V4)
    chosen = set()
    for start, length in ((0, 5000), (6000, 4097), (11000, 3000), (size - 300, 300)):
        first = nth(Pool.SUBNET_V4, start)
        allocator.reserve_specific(Pool.SUBNET_V4, first, {"kind": "subnet"})
        chosen.add(first)
        rest = range(start + 1, start + length)
        chosen |= _reserved_in_bulk(db, Pool.SUBNET_V4, rest, {"kind": "subnet"})
    handed_out = []
    while True:
        try:
            handed_out.append(allocator.reserve(Pool.SUBNET_V4, {"kind": "subnet"}))
        except PoolExhausted as err:
            assert "all 15359 in use" in str(err)
            break
    assert len(handed_out) == size - len(chosen)
    assert len(set(handed_out)) == len(handed_out)
    assert not set(handed_out) & chosen
    assert allocator.used(Pool.SUBNET_V4) == size
    allocator.release(Pool.SUBNET_V4, nth(Pool.SUBNET_V4, 7000))
    assert allocator.reserve(Pool.SUBNET_V4, {"kind": "subnet"}) == nth(Pool.SUBNET_V4, 7000)


def test_service_pool_past_long_user_chosen_runs(db):
    """The case that answered "pool full" at 8,500 of 65,534: runs of 4,096+ chosen IPs."""
    allocator = Allocator(db)
    owner = {"kind": "rr", "job_name": "a.b.c.d"}
    db["ip_reservations"].insert_many(
        {
            "_id": f"service_v4/{nth(Pool.SERVICE_V4, n)}",
            "pool": "service_v4",
            "slot": f"{n:040d}",
            "owner": owner,
        }
        for n in range(1, 8500)
    )
    assert allocator.reserve(Pool.SERVICE_V4, owner) == nth(Pool.SERVICE_V4, 0)
    assert allocator.reserve(Pool.SERVICE_V4, owner) == nth(Pool.SERVICE_V4, 8500)
    assert allocator.reserve(Pool.SERVICE_V4, owner) == nth(Pool.SERVICE_V4, 8501)
    assert db["ip_cursors"].find_one({"_id": "service_v4"})["next"] > 8501  # jumped the run


def test_a_process_updates_the_cursor_once_per_lease(db):
    allocator = Allocator(db)
    owner = {"kind": "instance", "job_name": "a.b.c.d"}
    addresses = [allocator.reserve(Pool.SERVICE_V4, owner) for _ in range(ipam.LEASE + 1)]
    assert addresses == [nth(Pool.SERVICE_V4, n) for n in range(ipam.LEASE + 1)]
    assert db["ip_cursors"].find_one({"_id": "service_v4"})["next"] == 2 * ipam.LEASE


def test_a_restarted_process_skips_the_rest_of_its_lease(db):
    owner = {"kind": "subnet"}
    assert Allocator(db).reserve(Pool.SUBNET_V4, owner) == nth(Pool.SUBNET_V4, 0)
    restarted = Allocator(db)
    assert restarted.reserve(Pool.SUBNET_V4, owner) == nth(Pool.SUBNET_V4, ipam.LEASE)


def test_processes_sharing_the_store_never_hand_out_one_address_twice(db):
    processes = [Allocator(db), Allocator(db), Allocator(db, lease=1)]
    owner = {"kind": "instance", "job_name": "a.b.c.d"}
    with ThreadPoolExecutor(16) as pool:
        addresses = list(
            pool.map(lambda i: processes[i % 3].reserve(Pool.SERVICE_V4, owner), range(1500))
        )
    assert len(set(addresses)) == 1500
    assert processes[0].used(Pool.SERVICE_V4) == 1500


def test_a_taken_address_in_the_lease_is_skipped_with_the_rest_of_the_lease(db):
    allocator = Allocator(db)
    owner = {"kind": "rr", "job_name": "a.b.c.d"}
    assert allocator.reserve(Pool.SERVICE_V4, owner) == nth(Pool.SERVICE_V4, 0)
    other = {"kind": "rr", "job_name": "x"}
    allocator.reserve_specific(Pool.SERVICE_V4, nth(Pool.SERVICE_V4, 1), other)
    allocator.reserve_specific(Pool.SERVICE_V4, nth(Pool.SERVICE_V4, 2), other)
    assert allocator.reserve(Pool.SERVICE_V4, owner) == nth(Pool.SERVICE_V4, 3)
    # the rest of the lease was dropped: the next address comes from the cursor
    assert allocator.reserve(Pool.SERVICE_V4, owner) == nth(Pool.SERVICE_V4, ipam.LEASE)


def test_lease_must_be_positive(db):
    with pytest.raises(ValueError, match="lease"):
        Allocator(db, lease=0)


def test_preview_lists_the_next_free_addresses_without_reserving(db):
    allocator = Allocator(db)
    allocator.reserve_specific(Pool.SERVICE_V4, "10.30.0.2", {"kind": "rr", "job_name": "j"})
    preview = allocator.preview(Pool.SERVICE_V4, 3)
    assert preview == ["10.30.0.1", "10.30.0.3", "10.30.0.4"]
    assert allocator.used(Pool.SERVICE_V4) == 1


def test_preview_starts_where_this_process_hands_out_next(db):
    allocator = Allocator(db)
    owner = {"kind": "rr", "job_name": "j"}
    assert allocator.reserve(Pool.SERVICE_V4, owner) == "10.30.0.1"  # leased up to 16
    preview = allocator.preview(Pool.SERVICE_V4, 2)
    assert preview == ["10.30.0.2", "10.30.0.3"]
    assert allocator.reserve(Pool.SERVICE_V4, owner) == preview[0]


def test_reserve_all_takes_one_address_of_each_pool_in_order(db):
    allocator = Allocator(db)
    owner = {"kind": "subnet"}
    first = allocator.reserve_all([(Pool.SUBNET_V4, owner), (Pool.SUBNET_V6, owner)])
    assert first == [nth(Pool.SUBNET_V4, 0), nth(Pool.SUBNET_V6, 0)]
    assert allocator.reserve(Pool.SUBNET_V4, owner) == nth(Pool.SUBNET_V4, 1)
    assert allocator.reserve_all([]) == []
    assert allocator.used(Pool.SUBNET_V4) == 2 and allocator.used(Pool.SUBNET_V6) == 1


def test_reserve_all_goes_past_a_taken_address_and_keeps_the_others(db):
    allocator = Allocator(db)
    owner = {"kind": "instance", "job_name": "a.b.c.d"}
    allocator.reserve_specific(Pool.SERVICE_V4, nth(Pool.SERVICE_V4, 0), {"kind": "rr"})
    got = allocator.reserve_all([(Pool.SERVICE_V4, owner), (Pool.INSTANCE_V6, owner)])
    assert got == [nth(Pool.SERVICE_V4, 1), nth(Pool.INSTANCE_V6, 0)]
    assert allocator.owner_of(Pool.SERVICE_V4, got[0]) == owner


@pytest.mark.slow  # fills the v4 subnet pool: 15,359 reservations in one insert_many
def test_reserve_all_keeps_nothing_when_one_pool_is_full(db):
    allocator = Allocator(db)
    _reserved_in_bulk(db, Pool.SUBNET_V4, range(pool_size(Pool.SUBNET_V4)), {"kind": "subnet"})
    owner = {"kind": "subnet"}
    with pytest.raises(PoolExhausted, match="subnet_v4"):
        allocator.reserve_all([(Pool.SUBNET_V6, owner), (Pool.SUBNET_V4, owner)])
    assert allocator.used(Pool.SUBNET_V6) == 0


def test_groups_and_single_reservations_from_two_processes_never_collide(db):
    processes = [Allocator(db), Allocator(db)]
    owner = {"kind": "instance", "job_name": "a.b.c.d"}

    def reserve(index: int) -> list[str]:
        allocator = processes[index % 2]
        if index % 3:
            return allocator.reserve_all([(Pool.SERVICE_V4, owner), (Pool.INSTANCE_V6, owner)])
        return [allocator.reserve(Pool.SERVICE_V4, owner)]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(reserve, range(900)))
    v4 = [addresses[0] for addresses in results]
    v6 = [addresses[1] for addresses in results if len(addresses) == 2]
    assert len(set(v4)) == 900 and len(set(v6)) == 600
    assert processes[0].used(Pool.SERVICE_V4) == 900
    assert processes[1].used(Pool.INSTANCE_V6) == 600
