"""Address management: reserve, release and look up addresses of the fixed pools.

Strategy (which address comes next) lives in `oakestra_net.addressing`; this module
only persists. Every pool has a cursor document advanced with one atomic
`find_one_and_update($inc)`, and every handed-out address is a reservation document
whose `_id` is `<pool>/<address>`, so two callers can never own the same address
(MongoDB rejects the second insert). A released address is reused only when the
cursor comes round to it again, so stale caches elsewhere cannot reach a new owner
early. No in-process locks: several processes may share one database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from oakestra_net.addressing import Pool, PoolExhausted, index_of, nth, pool_size

CURSORS = "ip_cursors"
RESERVATIONS = "ip_reservations"

# After this many taken addresses in a row the pool is declared exhausted, unless
# the pool is smaller (then one full turn decides).
MAX_PROBES = 4096


class AddressTaken(ValueError):
    """A specific address was asked for, but somebody else holds it."""


def _reservation_id(pool: Pool, address: str) -> str:
    return f"{pool}/{address}"


class Allocator:
    """Reserve and release addresses of the pools in one MongoDB database."""

    def __init__(self, db: Any) -> None:
        self._cursors = db[CURSORS]
        self._reservations = db[RESERVATIONS]
        self.reserved_total: Counter[str] = Counter()  # reservations made by this process

    def ensure_indexes(self) -> None:
        self._reservations.create_index([("pool", 1), ("owner.job_name", 1)])

    def reserve(self, pool: Pool, owner: Mapping[str, Any]) -> str:
        """Hand out the next free address of `pool`; raise PoolExhausted when none is left."""
        size = pool_size(pool)
        for _ in range(min(size, MAX_PROBES)):
            address = nth(pool, self._advance(pool) % size)
            if self._insert(pool, address, owner):
                return address
        raise PoolExhausted(f"no free address left in pool {pool}")

    def reserve_specific(self, pool: Pool, address: str, owner: Mapping[str, Any]) -> str:
        """Reserve a chosen address; the same owner asking again is fine, anyone else is not."""
        if index_of(pool, address) is None:
            raise ValueError(f"{address} is not in pool {pool}")
        if self._insert(pool, address, owner):
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

    def used(self, pool: Pool) -> int:
        return self._reservations.count_documents({"pool": str(pool)})

    def preview(self, pool: Pool, count: int) -> list[str]:
        """The next `count` addresses `reserve` would hand out now (nothing is reserved)."""
        size = pool_size(pool)
        cursor = self._cursors.find_one({"_id": str(pool)})
        start = cursor["next"] if cursor else 0
        found: list[str] = []
        for step in range(min(size, MAX_PROBES)):
            if len(found) >= count:
                break
            address = nth(pool, (start + step) % size)
            if self._reservations.find_one({"_id": _reservation_id(pool, address)}) is None:
                found.append(address)
        return found

    def _advance(self, pool: Pool) -> int:
        for _ in range(3):
            try:
                doc = self._cursors.find_one_and_update(
                    {"_id": str(pool)},
                    {"$inc": {"next": 1}},
                    upsert=True,
                    return_document=ReturnDocument.BEFORE,
                )
            except DuplicateKeyError:  # two first upserts raced; the loser retries
                continue
            return 0 if doc is None else int(doc["next"])
        raise RuntimeError(f"cannot advance the cursor of pool {pool}")

    def _insert(self, pool: Pool, address: str, owner: Mapping[str, Any]) -> bool:
        try:
            self._reservations.insert_one(
                {"_id": _reservation_id(pool, address), "pool": str(pool), "owner": dict(owner)}
            )
        except DuplicateKeyError:
            return False
        self.reserved_total[str(pool)] += 1
        return True


def _same_owner(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("kind", "job_name", "instance_number"))


def _describe(owner: Mapping[str, Any] | None) -> str:
    if not owner:
        return "another owner"
    job = owner.get("job_name", "?")
    if owner.get("kind") == "instance":
        return f"instance {owner.get('instance_number')} of {job}"
    return f"the {owner.get('kind', '?')} address of {job}"
