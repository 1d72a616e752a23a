"""Rebuilding what is in use when the root's store is new, before anything is allocated.

Nodes and clusters outlive the root's store: with the embedded (in-memory) store every
restart starts empty, and a real database can be lost. Services, instance IPs and node
subnets then still in use must never be handed out again. So:

- The store carries a generation document. A root that finds none creates it: the
  store is new, and the root is *rebuilding*.
- While rebuilding, every new reservation (service and instance IPs, node subnets)
  answers 503 "rebuilding". It ends when at least `min_wait` seconds passed and every
  registered cluster has pushed its state for this generation, or after `max_wait`
  seconds whatever happened (a cluster that never pushes, e.g. an upstream one, delays
  allocation by at most `max_wait`). The state lives in the store, so every process
  of a root on one database sees the same gate.
- Clusters watch the generation (`GET /api/net/state`); on a new one they register
  again and push what they know (`POST /api/net/cluster/state`): the jobs they cache
  with service and instance IPs, and their nodes' subnets. The root restores exactly
  those: reservations under the same owners, job documents (with `_id`) and instances
  that are missing, and the cluster's interest in the jobs it caches. An address held
  by another owner is reported back as a conflict, never taken over.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from oakestra_net.addressing import Pool, index_of
from oakestra_net.http_errors import ApiError
from oakestra_net.log import get_logger
from oakestra_net.names import is_valid_job_name

from .clusters import Clusters, caller_address
from .ipam import AddressTaken, Allocator

log = get_logger(__name__)

META = "meta"
REPORTS = "rebuild_reports"
GENERATION = "generation"
SERVICE_IPS = (("RR", "rr", Pool.RR_V6), ("Closest", "closest", Pool.CLOSEST_V6))
LOCATION_FIELDS = ("namespace_ip", "namespace_ip_v6", "host_ip", "host_port")
MAX_JOBS = 100_000
MAX_SUBNETS = 100_000


class Rebuilding(ApiError):
    """Allocation refused: the store is new and the clusters have not all reported yet."""

    def __init__(self, seconds_left: float) -> None:
        super().__init__(
            503,
            "rebuilding: the root's store is new and clusters are reporting the addresses "
            f"in use; try again in at most {max(seconds_left, 0.0):.0f} s",
        )


class Gate:
    """Whether the root may allocate yet; `check()` raises `Rebuilding` while it may not."""

    def __init__(
        self,
        db: Any,
        *,
        min_wait: float,
        max_wait: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta = db[META]
        self.reports = db[REPORTS]
        self.clusters = db["clusters"]
        self.clock = clock
        proposed = uuid.uuid4().hex
        now = clock()
        doc = self.meta.find_one_and_update(
            {"_id": GENERATION},
            {
                "$setOnInsert": {
                    "generation": proposed,
                    "created_at": now,
                    "rebuilding": True,
                    "min_until": now + min_wait,
                    "max_until": now + max(min_wait, max_wait),
                }
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:  # lost a concurrent upsert on a store that then returns nothing
            doc = self.meta.find_one({"_id": GENERATION})
        self.generation: str = doc["generation"]
        self.new_store = doc["generation"] == proposed
        self._done = not doc.get("rebuilding", False)
        if self.new_store:
            log.warning(
                "the store is new: rebuilding what is in use from the clusters",
                generation=self.generation,
                min_wait=min_wait,
                max_wait=max_wait,
            )

    def check(self) -> None:
        left = self.seconds_left()
        if left is not None:
            raise Rebuilding(left)

    def rebuilding(self) -> bool:
        return self.seconds_left() is not None

    def seconds_left(self) -> float | None:
        """None once allocation is allowed; else the longest it may still take."""
        if self._done:
            return None
        doc = self.meta.find_one({"_id": GENERATION}) or {}
        if not doc.get("rebuilding"):
            self._done = True
            return None
        now = self.clock()
        if now >= doc["max_until"] or (now >= doc["min_until"] and not self.silent_clusters()):
            self.meta.update_one({"_id": GENERATION}, {"$set": {"rebuilding": False}})
            log.info("rebuild finished, allocating again", silent=self.silent_clusters())
            self._done = True
            return None
        return doc["max_until"] - now

    def silent_clusters(self) -> list[str]:
        """Registered clusters that have not pushed their state for this generation."""
        reported = set(self.reports.distinct("_id", {"generation": self.generation}))
        return [
            c["cluster_id"]
            for c in self.clusters.find({}, {"cluster_id": 1, "cluster_address": 1})
            if c.get("cluster_address") not in reported
        ]

    def reported(self, address: str) -> None:
        self.reports.update_one(
            {"_id": address},
            {"$set": {"generation": self.generation, "at": self.clock()}},
            upsert=True,
        )

    def state(self) -> dict:
        return {"generation": self.generation, "rebuilding": self.rebuilding()}


class Restorer:
    """Takes a cluster's pushed state back into the store; returns what it did."""

    def __init__(self, db: Any, allocator: Allocator, clusters: Clusters, gate: Gate) -> None:
        self.jobs = db["jobs"]
        self.allocator = allocator
        self.clusters = clusters
        self.gate = gate

    def restore(self, remote_addr: str | None, state: dict) -> dict:
        jobs, subnets = state.get("jobs", []), state.get("subnets", [])
        if not isinstance(jobs, list) or len(jobs) > MAX_JOBS:
            raise ApiError(400, f"field 'jobs' must be a list of at most {MAX_JOBS} jobs")
        if not isinstance(subnets, list) or len(subnets) > MAX_SUBNETS:
            raise ApiError(400, f"field 'subnets' must be a list of at most {MAX_SUBNETS}")
        outcome = _Outcome()
        address = caller_address(remote_addr)
        cluster = self.clusters.by_address(address)
        for job in jobs:
            self._job(job, cluster, outcome)
        cluster_id = cluster["cluster_id"] if cluster is not None else None
        for subnet in subnets:
            self._subnet(subnet, cluster_id, outcome)
        self.gate.reported(address)
        log.info(
            "cluster state restored",
            cluster=address,
            cluster_id=cluster and cluster["cluster_id"],
            jobs=len(jobs),
            subnets=len(subnets),
            reserved=outcome.reserved,
            conflicts=len(outcome.conflicts),
        )
        for conflict in outcome.conflicts[:20]:
            log.error("address in use reported twice", cluster=address, conflict=conflict)
        return {
            "message": "state restored",
            "generation": self.gate.generation,
            "reserved": outcome.reserved,
            "conflicts": outcome.conflicts,
        }

    def _job(self, job: Any, cluster: dict | None, outcome: _Outcome) -> None:
        if not isinstance(job, dict) or not is_valid_job_name(job.get("job_name")):
            outcome.conflict("job without a valid job_name skipped")
            return
        name = job["job_name"]
        try:
            job_id = ObjectId(job.get("job_id"))
        except (InvalidId, TypeError):
            outcome.conflict(f"job {name}: job_id is not an object id, skipped")
            return
        current = self._job_document(job_id, name, outcome)
        if current is None:
            return
        service_ips = []
        for entry in _list(job.get("service_ip_list")):
            kept = self._service_ip(name, entry, outcome)
            if kept is not None:
                service_ips.append(kept)
        if not current.get("service_ip_list") and service_ips:
            self.jobs.update_one(
                {"_id": job_id, "service_ip_list": {"$size": 0}},
                {"$set": {"service_ip_list": service_ips}},
            )
        for instance in _list(job.get("instance_list")):
            self._instance(job_id, name, instance, outcome)
        if cluster is not None:
            self.clusters.add_interest(cluster["cluster_id"], name)

    def _job_document(self, job_id: ObjectId, name: str, outcome: _Outcome) -> dict | None:
        """The root's document of the job, created if missing; None on a conflict."""
        for _ in range(3):
            current = self.jobs.find_one({"job_name": name})
            if current is not None:
                if current["_id"] != job_id:
                    outcome.conflict(f"job {name}: known with _id {current['_id']}, not {job_id}")
                    return None
                return current
            doc = {"_id": job_id, "job_name": name, "service_ip_list": [], "instance_list": []}
            try:
                self.jobs.insert_one(doc)
            except DuplicateKeyError:
                continue  # created meanwhile, or the _id belongs to another job name
            return doc
        outcome.conflict(f"job {name}: _id {job_id} belongs to another job")
        return None

    def _service_ip(self, name: str, entry: Any, outcome: _Outcome) -> dict | None:
        kinds = {ip_type: (kind, pool) for ip_type, kind, pool in SERVICE_IPS}
        if not isinstance(entry, dict) or entry.get("IpType") not in kinds:
            outcome.conflict(f"job {name}: bad service_ip_list entry skipped")
            return None
        kind, pool_v6 = kinds[entry["IpType"]]
        owner = {"kind": kind, "job_name": name}
        v4 = self._take(Pool.SERVICE_V4, entry.get("Address"), owner, outcome)
        v6 = self._take(pool_v6, entry.get("Address_v6"), owner, outcome)
        return {"IpType": entry["IpType"], "Address": v4, "Address_v6": v6}

    def _instance(self, job_id: ObjectId, name: str, instance: Any, outcome: _Outcome) -> None:
        number = instance.get("instance_number") if isinstance(instance, dict) else None
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < 2**31:
            outcome.conflict(f"job {name}: instance without a valid instance_number skipped")
            return
        owner = {"kind": "instance", "job_name": name, "instance_number": number}
        v4 = self._take(Pool.SERVICE_V4, instance.get("instance_ip"), owner, outcome)
        v6 = self._take(Pool.INSTANCE_V6, instance.get("instance_ip_v6"), owner, outcome)
        if v4 is None or v6 is None:
            return
        doc = {"instance_number": number, "instance_ip": v4, "instance_ip_v6": v6}
        cluster_id = instance.get("cluster_id")
        doc["cluster_id"] = cluster_id if isinstance(cluster_id, str) else None
        for field in LOCATION_FIELDS:
            value = instance.get(field)
            doc[field] = value if isinstance(value, str | int) and value != "" else None
        self.jobs.update_one(
            {"_id": job_id, "instance_list.instance_number": {"$ne": number}},
            {"$push": {"instance_list": doc}},
        )

    def _subnet(self, subnet: Any, cluster_id: str | None, outcome: _Outcome) -> None:
        """One node's subnets (either family may be absent: a cluster that only knows
        what the root listed for it has the families apart)."""
        if not isinstance(subnet, dict):
            outcome.conflict("subnet entry is not an object, skipped")
            return
        owner = {"kind": "subnet", "cluster_id": cluster_id}
        for pool, key in ((Pool.SUBNET_V4, "subnet_addr"), (Pool.SUBNET_V6, "subnet_addr_v6")):
            if subnet.get(key) is not None:
                self._take(pool, subnet[key], owner, outcome)

    def _take(self, pool: Pool, address: Any, owner: dict, outcome: _Outcome) -> str | None:
        if not isinstance(address, str) or index_of(pool, address) is None:
            outcome.conflict(f"{str(address)[:64]} is not an address of pool {pool}, skipped")
            return None
        try:
            taken = self.allocator.restore(pool, address, owner)
        except AddressTaken as err:
            outcome.conflict(str(err))
            return None
        outcome.reserved += 1
        return taken


class _Outcome:
    def __init__(self) -> None:
        self.reserved = 0
        self.conflicts: list[str] = []

    def conflict(self, text: str) -> None:
        if len(self.conflicts) < 1000:
            self.conflicts.append(text)


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []
