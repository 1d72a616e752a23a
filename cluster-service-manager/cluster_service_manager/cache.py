"""The cluster's MongoDB state: cached jobs, interested nodes, node subnets, placements.

Collections `jobs` (`_id` = job name; `CachedJob.to_store` is the document), `nodes`
(`_id` = node id, `node_subnet`, `node_subnet_v6`) and `placements` (`_id` =
`<job name>/<instance number>`, `job_name`, `node_id`: where the orchestrator scheduled
an instance, when it said so). Every change is one atomic
MongoDB operation, so several processes can share the store:
- interested nodes change with `$addToSet` / `$pull` only;
- the instance list changes by compare-and-set on the document's `version` (read,
  compute with a pure function of `jobs`, write if nobody wrote in between, else
  again), so a node report and a root refresh never overwrite each other;
- a job is forgotten with one conditional delete that holds only while no node is
  interested and no instance runs in the cluster.
Upstream drops the job cache at every start; we keep it: with a real MongoDB it stays
valid (the root's outbox re-delivers the updates we missed), with the embedded store
it starts empty anyway. When to call what is the handlers' business.

Jobs come and go as typed `CachedJob` values; documents exist only between this module
and the store. With the embedded store this process is the store's only user, so the
jobs are also kept in memory (`_Memory`: by name and by each service and instance IP), and lookups
answer from there without a store operation; the store stays the copy every write
goes to first. Each write and its memory update happen under one lock, so memory
follows the store's order. With a real MongoDB, other processes write too: lookups
then read the store (by `_id`, or through its indexes by IP).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pymongo.errors import DuplicateKeyError

from oakestra_net import store as store_module

from . import jobs
from .jobs import CachedJob, Instances, Job

MAX_ATTEMPTS = 50
IP_FIELDS = (
    "service_ip_list.Address",
    "service_ip_list.Address_v6",
    "instance_list.instance_ip",
    "instance_list.instance_ip_v6",
)


class CacheConflict(RuntimeError):
    """A job document changed under us too many times in a row (should not happen)."""


class _Memory:
    """Cached jobs by name, and job names by every IP in them (pure, no I/O)."""

    def __init__(self) -> None:
        self.by_name: dict[str, CachedJob] = {}
        self.by_ip: dict[str, set[str]] = {}

    def put(self, doc: CachedJob) -> None:
        name = doc.job_name
        self.drop(name)
        self.by_name[name] = doc
        for address in _addresses(doc):
            self.by_ip.setdefault(address, set()).add(name)

    def drop(self, name: str) -> None:
        old = self.by_name.pop(name, None)
        if old is None:
            return
        for address in _addresses(old):
            names = self.by_ip.get(address)
            if names is not None:
                names.discard(name)
                if not names:
                    del self.by_ip[address]

    def find_ip(self, address: str) -> CachedJob | None:
        """The job holding `address`; the first by name if, briefly, two do (IP reuse)."""
        names = self.by_ip.get(address)
        return self.by_name[min(names)] if names else None


def _addresses(job: Job) -> set[str]:
    out = set()
    for entry in job.service_ips:
        out.update(a for a in (entry.address, entry.address_v6) if a)
    for instance in job.instances:
        out.update(a for a in (instance.instance_ip, instance.instance_ip_v6) if a)
    return out


def _loaded(doc: dict | None) -> CachedJob | None:
    return None if doc is None else CachedJob.from_store(doc)


class JobCache:
    def __init__(self, db: Any, cluster_id: str | None = None) -> None:
        self.jobs = db["jobs"]
        self.nodes = db["nodes"]
        self.placements = db["placements"]
        self.root_subnets = db["root_subnets"]
        self.cluster_id = cluster_id
        self._memory = _Memory() if store_module.is_embedded(db) else None
        self._lock = threading.RLock()
        if self._memory is not None:
            # An embedded store handed over with jobs in it (a restart inside one process):
            # the memory starts from them, or every write would miss and collide.
            for doc in self.jobs.find({}):
                self._memory.put(CachedJob.from_store(doc))

    @contextmanager
    def _writing(self) -> Iterator[_Memory | None]:
        """Hold the write lock when jobs are kept in memory (nothing to order otherwise)."""
        if self._memory is None:
            yield None
            return
        with self._lock:
            yield self._memory

    def ensure_indexes(self) -> None:
        for field in IP_FIELDS:
            self.jobs.create_index(field)
        self.jobs.create_index("interested_nodes")
        self.placements.create_index("job_name")

    # -- reading ---------------------------------------------------------------------

    def get(self, job_name: str) -> CachedJob | None:
        """The cached job."""
        if self._memory is not None:
            return self._memory.by_name.get(job_name)
        return _loaded(self.jobs.find_one({"_id": job_name}))

    def by_ip(self, service_ip: str) -> CachedJob | None:
        """The cached job owning `service_ip` (RR, Closest, instance; v4 or v6)."""
        if self._memory is not None and service_ip in self._memory.by_ip:
            return self._memory.find_ip(service_ip)  # already canonical: skip the parsing
        address = jobs.canonical_ip(service_ip)
        if address is None:
            return None
        if self._memory is not None:
            return self._memory.find_ip(address)
        # One indexed lookup per field, service IPs first (what nodes ask for), rather
        # than one `$or`: some MongoDB-wire servers scan the collection for an `$or`
        # (SecantusDB: 40 ms at 2,000 jobs, against 0.4 ms per indexed field).
        for field in IP_FIELDS:
            doc = self.jobs.find_one({field: address})
            if doc is not None:
                return _loaded(doc)
        return None

    def job_names(self) -> list[str]:
        return [doc["_id"] for doc in self.jobs.find({}, {"_id": 1})]

    def count(self) -> int:
        return self.jobs.count_documents({})

    # -- writing jobs ----------------------------------------------------------------

    def store(
        self,
        job: Job,
        *,
        create: bool = True,
        interested: str | None = None,
        absent: bool = False,
    ) -> CachedJob | None:
        """Insert or refresh a job from the root (see `jobs.merge_instances`); as stored.

        With `create=False` only a job still cached is refreshed (None otherwise): a
        refresh must not bring back a job forgotten meanwhile. `interested`: the node
        whose query made us fetch it, recorded with the insert (one write, not two); a
        refreshed job's interests are left as they are. `absent`: the caller has just
        found the job missing, so the insert is tried without reading first (a job
        stored meanwhile turns it into a refresh, as without the hint).
        """
        name = job.job_name
        for attempt in range(MAX_ATTEMPTS):
            current = None if absent and attempt == 0 else self.get(name)
            if current is None and not create:
                return None
            if current is None:
                nodes = (interested,) if interested else ()
                fresh = CachedJob(
                    job.job_name, job.job_id, job.service_ips, job.instances, interested_nodes=nodes
                )
                with self._writing() as memory:
                    try:
                        self.jobs.insert_one(fresh.to_store())
                    except DuplicateKeyError:
                        self._reload(memory, name)
                        continue
                    if memory is not None:
                        memory.put(fresh)
                return fresh
            merged = jobs.merge_instances(current.instances, job.instances)
            refreshed = Job(job.job_name, job.job_id, job.service_ips, merged)
            written = self._write(current, refreshed)
            if written is not None:
                return written
        raise CacheConflict(f"job {name} changed {MAX_ATTEMPTS} times while being stored")

    def update_instances(
        self, job_name: str, change: Callable[[Instances], Instances]
    ) -> tuple[CachedJob, CachedJob] | None:
        """Apply `change` to the instance list; (before, after), None if not cached."""
        for _ in range(MAX_ATTEMPTS):
            current = self.get(job_name)
            if current is None:
                return None
            instances = tuple(change(current.instances))
            if instances == current.instances:
                return current, current
            changed = Job(current.job_name, current.job_id, current.service_ips, instances)
            after = self._write(current, changed)
            if after is not None:
                return current, after
        raise CacheConflict(f"job {job_name} changed {MAX_ATTEMPTS} times while being updated")

    def _write(self, current: CachedJob, job: Job) -> CachedJob | None:
        """Compare-and-set on the version; the job as written, None if it changed.

        Interests change without a new version, so they are not written here and the
        answer keeps the latest ones known.
        """
        with self._writing() as memory:
            result = self.jobs.update_one(
                {"_id": current.job_name, "version": current.version},
                {"$set": job.to_document(), "$inc": {"version": 1}},
            )
            if result.matched_count != 1:
                self._reload(memory, current.job_name)
                return None
            base = memory.by_name.get(current.job_name, current) if memory is not None else current
            after = CachedJob(
                job.job_name,
                job.job_id,
                job.service_ips,
                job.instances,
                interested_nodes=base.interested_nodes,
                version=current.version + 1,
            )
            if memory is not None:
                memory.put(after)
            return after

    def _reload(self, memory: _Memory | None, job_name: str) -> None:
        """After a write found the store other than memory had it: take the store's copy
        (memory is a cache of the store; nothing else should write, but never loop on it)."""
        if memory is None:
            return
        doc = self.jobs.find_one({"_id": job_name})
        if doc is None:
            memory.drop(job_name)
        else:
            memory.put(CachedJob.from_store(doc))

    def delete(self, job_name: str) -> CachedJob | None:
        with self._writing() as memory:
            doc = self.jobs.find_one_and_delete({"_id": job_name})
            if memory is not None:
                memory.drop(job_name)
            return _loaded(doc)

    # -- interests -------------------------------------------------------------------

    def add_interest(self, job_name: str, node_id: str, job: CachedJob | None = None) -> bool:
        """Record the node's interest; False if the job is not cached (any more).

        `job`, the document just read, saves the write when it already lists the node
        (a node asking again: the common case).
        """
        if job is not None and node_id in job.interested_nodes:
            return True
        change = {"$addToSet": {"interested_nodes": node_id}}
        with self._writing() as memory:
            result = self.jobs.update_one({"_id": job_name}, change)
            if memory is not None:
                self._set_interest(memory, job_name, node_id, add=True)
            return result.matched_count == 1

    def remove_interest(self, job_name: str, node_id: str) -> bool:
        """Drop the node's interest; False if the job is not cached."""
        with self._writing() as memory:
            result = self.jobs.update_one(
                {"_id": job_name}, {"$pull": {"interested_nodes": node_id}}
            )
            if memory is not None:
                self._set_interest(memory, job_name, node_id, add=False)
            return result.matched_count == 1

    @staticmethod
    def _set_interest(memory: _Memory, job_name: str, node_id: str, *, add: bool) -> None:
        doc = memory.by_name.get(job_name)
        if doc is None:
            return
        nodes = tuple(n for n in doc.interested_nodes if n != node_id)
        if add:
            nodes = (*nodes, node_id)
        memory.by_name[job_name] = dataclasses.replace(doc, interested_nodes=nodes)

    def forget_if_unused(self, job_name: str) -> bool:
        """Delete the job if no node is interested and no instance runs here; whether it did."""
        runs_here: list[dict] = [{"worker_id": {"$type": "string"}}]
        if self.cluster_id is not None:
            runs_here.append({"cluster_id": self.cluster_id})
        # `$nor` of one `$elemMatch` per condition, not `$or` inside `$elemMatch`: the same
        # documents, and a form every MongoDB-wire server accepts
        with self._writing() as memory:
            result = self.jobs.delete_one(
                {
                    "_id": job_name,
                    "interested_nodes.0": {"$exists": False},
                    "$nor": [{"instance_list": {"$elemMatch": cond}} for cond in runs_here],
                }
            )
            if memory is not None and result.deleted_count == 1:
                memory.drop(job_name)
            return result.deleted_count == 1

    # -- node subnets ----------------------------------------------------------------

    def node_subnet(self, node_id: str) -> tuple[str, str] | None:
        doc = self.nodes.find_one({"_id": node_id})
        return None if doc is None else (doc["node_subnet"], doc["node_subnet_v6"])

    def claim_node_subnet(self, node_id: str, subnet: tuple[str, str]) -> tuple[str, str]:
        """Store `subnet` for the node unless it has one; the subnet the node has now."""
        try:
            self.nodes.insert_one(
                {"_id": node_id, "node_subnet": subnet[0], "node_subnet_v6": subnet[1]}
            )
        except DuplicateKeyError:
            stored = self.node_subnet(node_id)
            if stored is not None:
                return stored
            return self.claim_node_subnet(node_id, subnet)  # deleted in between
        return subnet

    def remove_node_subnet(self, node_id: str) -> tuple[str, str] | None:
        doc = self.nodes.find_one_and_delete({"_id": node_id})
        if doc is None:
            return None
        subnet = (doc["node_subnet"], doc["node_subnet_v6"])
        self.root_subnets.delete_many({"_id": {"$in": list(subnet)}})
        return subnet

    def remember_root_subnets(self, v4: list[str], v6: list[str]) -> None:
        """Keep the subnets the root records for this cluster: with a store that did not
        outlive a restart (the embedded one) they are the only trace of the nodes'
        subnets, which a root that loses its store next must get back."""
        for family, addresses in (("v4", v4), ("v6", v6)):
            for address in addresses:
                self.root_subnets.update_one(
                    {"_id": address}, {"$set": {"family": family}}, upsert=True
                )

    def remembered_root_subnets(self) -> list[dict]:
        """Those subnets as `POST /api/net/cluster/state` entries (one family each)."""
        key = {"v4": "subnet_addr", "v6": "subnet_addr_v6"}
        return [{key[d["family"]]: d["_id"]} for d in self.root_subnets.find({})]

    # -- placements ------------------------------------------------------------------

    def schedule(self, job_name: str, number: int, node_id: str) -> None:
        """Record that the orchestrator placed instance `number` on `node_id` (last wins)."""
        self.placements.update_one(
            {"_id": f"{job_name}/{number}"},
            {"$set": {"job_name": job_name, "node_id": node_id}},
            upsert=True,
        )

    def scheduled_node(self, job_name: str, number: int) -> str | None:
        doc = self.placements.find_one({"_id": f"{job_name}/{number}"})
        return None if doc is None else doc["node_id"]

    def forget_placement(self, job_name: str, number: int) -> None:
        """Drop the placement of instance `number`; -1 drops every instance of the job."""
        if number == -1:
            self.placements.delete_many({"job_name": job_name})
        else:
            self.placements.delete_one({"_id": f"{job_name}/{number}"})
