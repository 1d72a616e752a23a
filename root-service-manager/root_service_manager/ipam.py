"""Address management: reserve, release and look up addresses of the fixed pools.

Strategy (which address comes next) lives in `oakestra_net.addressing`; this module
only persists. Every pool has a cursor document advanced with one atomic
`find_one_and_update($inc)`, and every handed-out address is a reservation document
whose `_id` is `<pool>/<address>`, so two callers can never own the same address
(MongoDB rejects the second insert). A released address is reused only when the
cursor comes round to it again, so stale caches elsewhere cannot reach a new owner
early. Several processes may share one database: uniqueness never depends on
anything held in a process.

A process takes its cursor positions LEASE at a time (one `$inc` by LEASE) and hands
them out in order, so a reservation is one insert, not a cursor update and an insert:
on a MongoDB server each is a round trip. `reserve_all` makes the reservations of one
request (a service's four addresses, a node's two subnets) with one insert. Positions
a process leased but did not use (it stopped, or met a taken address) are skipped
until the cursor comes round; with several processes, addresses come in interleaved
blocks instead of one sequence.

Each reservation also records its position in the pool (`slot`), so the next free
address after a run of taken ones is found with ordered range queries on an index, a
number logarithmic in the pool's size, and the cursor jumps past the run.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError

from oakestra_net.addressing import Pool, PoolExhausted, index_of, nth, pool_size

CURSORS = "ip_cursors"
RESERVATIONS = "ip_reservations"

# Positions whose reservations are read in one ordered query when the cursor meets a
# taken address, and how many such windows are read before a longer run is crossed
# by bisection with range counts.
BATCH = 1000
WINDOWS = 8
# Attempts when concurrent callers keep winning the free address found.
MAX_RACES = 64
# Cursor positions a process takes with one cursor update.
LEASE = 16
# Positions are stored as fixed-width decimal strings: the v6 pools have more than 2**63
# positions (too large for a BSON integer) and strings of equal width sort numerically.
SLOT_WIDTH = 40
DUPLICATE_KEY = 11000  # MongoDB's error code for a unique index violation


class AddressTaken(ValueError):
    """A specific address was asked for, but somebody else holds it."""


def _reservation_id(pool: Pool, address: str) -> str:
    return f"{pool}/{address}"


def _slot(position: int) -> str:
    return f"{position:0{SLOT_WIDTH}d}"


class Allocator:
    """Reserve and release addresses of the pools in one MongoDB database.

    `gate` is called before every new reservation; it raises when allocation must wait
    (the root is rebuilding what is in use). `restore` is not gated. `lease`: cursor
    positions taken per cursor update (1: every reservation advances the cursor).
    """

    def __init__(
        self, db: Any, gate: Callable[[], None] | None = None, *, lease: int = LEASE
    ) -> None:
        if lease < 1:
            raise ValueError(f"lease must be >= 1, got {lease}")
        self._cursors = db[CURSORS]
        self._reservations = db[RESERVATIONS]
        self._gate = gate or (lambda: None)
        self._lease_size = lease
        # pool -> [next ticket, end) of this process's leased cursor positions. The lock
        # only keeps two threads from taking the same ticket (which would cost a failed
        # insert); it is never held across a database call.
        self._leases: dict[Pool, tuple[int, int]] = {}
        self._leases_lock = threading.Lock()
        self.reserved_total: Counter[str] = Counter()  # reservations made by this process

    def ensure_indexes(self) -> None:
        self._reservations.create_index([("pool", 1), ("owner.job_name", 1)])
        self._reservations.create_index([("pool", 1), ("slot", 1)])
        self._reservations.create_index([("pool", 1), ("owner.cluster_id", 1)])
        for doc in self._reservations.find({"slot": {"$exists": False}}, {"_id": 1, "pool": 1}):
            position = index_of(Pool(doc["pool"]), doc["_id"].split("/", 1)[1])
            if position is not None:
                self._reservations.update_one(
                    {"_id": doc["_id"]}, {"$set": {"slot": _slot(position)}}
                )

    def reserve(self, pool: Pool, owner: Mapping[str, Any]) -> str:
        """Hand out the next free address of `pool`; raise PoolExhausted when none is left.

        The cursor's own position is tried first (one insert). When it is taken, the
        reservations from there on are read in order to find the first gap, and the
        cursor jumps past it, so a run of taken addresses is crossed once, not probed
        address by address.
        """
        self._gate()
        return self._reserve(pool, owner, None)

    def reserve_all(self, wanted: Sequence[tuple[Pool, Mapping[str, Any]]]) -> list[str]:
        """One address from each (pool, owner) of `wanted`, in that order; all or none.

        Each takes the next position of its pool's lease and all are inserted at once;
        one whose position was taken goes on from there the way `reserve` does.
        """
        self._gate()
        if not wanted:
            return []
        tickets = [self._advance(pool) for pool, _ in wanted]
        docs = [
            _reservation(pool, ticket % pool_size(pool), owner)
            for (pool, owner), ticket in zip(wanted, tickets, strict=True)
        ]
        taken = self._insert_all(docs)
        got: list[str | None] = [
            None if index in taken else nth(pool, ticket % pool_size(pool))
            for index, ((pool, _), ticket) in enumerate(zip(wanted, tickets, strict=True))
        ]
        try:
            for index in sorted(taken):
                pool, owner = wanted[index]
                got[index] = self._reserve(pool, owner, tickets[index])
        except BaseException:
            for (pool, _), address in zip(wanted, got, strict=True):
                self.release(pool, address)
            raise
        return [address for address in got if address is not None]

    def _reserve(self, pool: Pool, owner: Mapping[str, Any], taken: int | None) -> str:
        """`reserve`; `taken`: a ticket whose position was just found taken."""
        size = pool_size(pool)
        for _ in range(MAX_RACES):
            if taken is None:
                ticket = self._advance(pool)
                if self._insert(pool, ticket % size, owner):
                    return nth(pool, ticket % size)
            else:
                ticket, taken = taken, None
            position = ticket % size
            self._drop_lease(pool)  # the next positions are likely taken too
            free = self._next_free(pool, position)
            if free is None:
                raise PoolExhausted(f"no free address left in pool {pool} (all {size} in use)")
            wrapped = size if free < position else 0
            self._cursors.update_one(
                {"_id": str(pool)}, {"$max": {"next": ticket - position + wrapped + free + 1}}
            )
            if self._insert(pool, free, owner):
                return nth(pool, free)
        raise PoolExhausted(f"pool {pool} is too contended right now, try again")

    def reserve_specific(self, pool: Pool, address: str, owner: Mapping[str, Any]) -> str:
        """Reserve a chosen address; the same owner asking again is fine, anyone else is not."""
        self._gate()
        return self.restore(pool, address, owner)

    def restore(self, pool: Pool, address: str, owner: Mapping[str, Any]) -> str:
        """`reserve_specific` without the gate: for addresses known to be in use already."""
        position = index_of(pool, address)
        if position is None:
            raise ValueError(f"{address} is not in pool {pool}")
        address = nth(pool, position)  # canonical
        if self._insert(pool, position, owner):
            return address
        holder = self.owner_of(pool, address)
        if holder is not None and _same_owner(holder, owner):
            return address
        raise AddressTaken(f"{address} is already used by {_describe(holder)}")

    def release(self, pool: Pool, address: str | None) -> bool:
        if not address:
            return False
        result = self._reservations.delete_one({"_id": _reservation_id(pool, address)})
        return result.deleted_count == 1

    def owner_of(self, pool: Pool, address: str) -> dict[str, Any] | None:
        doc = self._reservations.find_one({"_id": _reservation_id(pool, address)})
        return None if doc is None else doc.get("owner", {})

    def owned_by_cluster(self, pool: Pool, cluster_id: str) -> list[str]:
        """Addresses of `pool` reserved for the cluster `cluster_id` (its nodes' subnets)."""
        found = self._reservations.find(
            {"pool": str(pool), "owner.cluster_id": cluster_id}, {"_id": 1}
        )
        return sorted(doc["_id"].split("/", 1)[1] for doc in found)

    def used(self, pool: Pool) -> int:
        return self._reservations.count_documents({"pool": str(pool)})

    def preview(self, pool: Pool, count: int) -> list[str]:
        """The next `count` addresses `reserve` would hand out now (nothing is reserved)."""
        size = pool_size(pool)
        with self._leases_lock:
            lease = self._leases.get(pool)
        if lease is not None and lease[0] < lease[1]:
            start = lease[0] % size
        else:
            cursor = self._cursors.find_one({"_id": str(pool)})
            start = int(cursor["next"]) % size if cursor else 0
        found: list[str] = []
        position = start
        while len(found) < count:
            free = self._first_gap(pool, position, size)
            if free is None:
                break
            found.append(nth(pool, free))
            position = free + 1
        position = 0
        while len(found) < count:
            free = self._first_gap(pool, position, start)
            if free is None:
                break
            found.append(nth(pool, free))
            position = free + 1
        return found

    def _next_free(self, pool: Pool, position: int) -> int | None:
        """The first free position after `position`, wrapping round once; None when full."""
        size = pool_size(pool)
        free = self._first_gap(pool, position + 1, size)
        return free if free is not None else self._first_gap(pool, 0, position + 1)

    def _first_gap(self, pool: Pool, low: int, high: int) -> int | None:
        """The first position in [low, high) without a reservation, or None.

        The reservations of the next positions are read in order, BATCH positions per
        query on the (pool, slot) index; a run longer than WINDOWS such windows is
        crossed by bisection with range counts instead, so the number of queries stays
        logarithmic in the pool, whatever the run's length.
        """
        expected = low
        for _ in range(WINDOWS):
            window = min(high, expected + BATCH)
            if expected >= window:
                return None
            query = {"pool": str(pool), "slot": {"$gte": _slot(expected), "$lt": _slot(window)}}
            for doc in self._reservations.find(query, {"slot": 1, "_id": 0}).sort("slot", 1):
                position = int(doc["slot"])
                if position > expected:
                    return expected
                expected = position + 1
            if expected < window:
                return expected
        expected = self._end_of_run(pool, expected, high)
        return expected if expected < high else None

    def _end_of_run(self, pool: Pool, low: int, high: int) -> int:
        """The largest end <= high such that every position in [low, end) is taken."""
        full, beyond = low, high  # [low, full) is taken; the answer is in [full, beyond]
        while full < beyond:
            middle = (full + beyond + 1) // 2
            span = {"$gte": _slot(full), "$lt": _slot(middle)}
            taken = self._reservations.count_documents({"pool": str(pool), "slot": span})
            if taken == middle - full:
                full = middle
            else:
                beyond = middle - 1
        return full

    def _advance(self, pool: Pool) -> int:
        """The next cursor position (ticket) of this process: from its lease, or the
        first of a new lease taken from the cursor."""
        with self._leases_lock:
            lease = self._leases.get(pool)
            if lease is not None and lease[0] < lease[1]:
                self._leases[pool] = (lease[0] + 1, lease[1])
                return lease[0]
        start = self._take_from_cursor(pool, self._lease_size)
        if self._lease_size > 1:
            with self._leases_lock:
                # a thread that took a lease at the same time may lose its rest: skipped
                self._leases[pool] = (start + 1, start + self._lease_size)
        return start

    def _drop_lease(self, pool: Pool) -> None:
        with self._leases_lock:
            self._leases.pop(pool, None)

    def _take_from_cursor(self, pool: Pool, count: int) -> int:
        for _ in range(3):
            try:
                doc = self._cursors.find_one_and_update(
                    {"_id": str(pool)},
                    {"$inc": {"next": count}},
                    upsert=True,
                    return_document=ReturnDocument.BEFORE,
                )
            except DuplicateKeyError:  # two first upserts raced; the loser retries
                continue
            return 0 if doc is None else int(doc["next"])
        raise RuntimeError(f"cannot advance the cursor of pool {pool}")

    def _insert(self, pool: Pool, position: int, owner: Mapping[str, Any]) -> bool:
        try:
            self._reservations.insert_one(_reservation(pool, position, owner))
        except DuplicateKeyError:
            return False
        self.reserved_total[str(pool)] += 1
        return True

    def _insert_all(self, docs: list[dict[str, Any]]) -> set[int]:
        """Insert reservations in one request; the indexes of those already taken."""
        try:
            self._reservations.insert_many(docs, ordered=False)
            taken: set[int] = set()
        except BulkWriteError as err:
            errors = err.details.get("writeErrors", [])
            taken = {e["index"] for e in errors if e.get("code") == DUPLICATE_KEY}
            if len(taken) < len(errors):  # not only taken addresses: undo and report
                failed = {e["index"] for e in errors}
                for index, doc in enumerate(docs):
                    if index not in failed:
                        self._reservations.delete_one({"_id": doc["_id"]})
                raise
        for index, doc in enumerate(docs):
            if index not in taken:
                self.reserved_total[doc["pool"]] += 1
        return taken


def _reservation(pool: Pool, position: int, owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "_id": _reservation_id(pool, nth(pool, position)),
        "pool": str(pool),
        "slot": _slot(position),
        "owner": dict(owner),
    }


def _same_owner(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("kind", "job_name", "instance_number"))


def _describe(owner: Mapping[str, Any] | None) -> str:
    if not owner:
        return "another owner"
    job = owner.get("job_name", "?")
    if owner.get("kind") == "instance":
        return f"instance {owner.get('instance_number')} of {job}"
    return f"the {owner.get('kind', '?')} address of {job}"
