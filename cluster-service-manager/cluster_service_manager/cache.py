"""The cluster's MongoDB state: cached jobs with their interested nodes, and node subnets.

Collections `jobs` (`_id` = job name, see `jobs` for the document) and `nodes`
(`_id` = node id, `node_subnet`, `node_subnet_v6`). Every change is one atomic
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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymongo.errors import DuplicateKeyError

from . import jobs

MAX_ATTEMPTS = 50
IP_FIELDS = (
    "service_ip_list.Address",
    "service_ip_list.Address_v6",
    "instance_list.instance_ip",
    "instance_list.instance_ip_v6",
)


class CacheConflict(RuntimeError):
    """A job document changed under us too many times in a row (should not happen)."""


class JobCache:
    def __init__(self, db: Any, cluster_id: str | None = None) -> None:
        self.jobs = db["jobs"]
        self.nodes = db["nodes"]
        self.cluster_id = cluster_id

    def ensure_indexes(self) -> None:
        for field in IP_FIELDS:
            self.jobs.create_index(field)
        self.jobs.create_index("interested_nodes")

    # -- reading ---------------------------------------------------------------------

    def get(self, job_name: str) -> dict | None:
        return self.jobs.find_one({"_id": job_name})

    def by_ip(self, service_ip: str) -> dict | None:
        """The cached job owning `service_ip` (RR, Closest, instance; v4 or v6)."""
        address = jobs.canonical_ip(service_ip)
        if address is None:
            return None
        return self.jobs.find_one({"$or": [{field: address} for field in IP_FIELDS]})

    def job_names(self) -> list[str]:
        return [doc["_id"] for doc in self.jobs.find({}, {"_id": 1})]

    def count(self) -> int:
        return self.jobs.count_documents({})

    # -- writing jobs ----------------------------------------------------------------

    def store(self, job: dict) -> dict:
        """Insert or refresh a job from the root (see `jobs.merge_instances`); the stored doc."""
        name = job["job_name"]
        for _ in range(MAX_ATTEMPTS):
            current = self.get(name)
            if current is None:
                doc = {"_id": name, **job, "interested_nodes": [], "version": 1}
                try:
                    self.jobs.insert_one(doc)
                except DuplicateKeyError:
                    continue
                return doc
            merged = jobs.merge_instances(current["instance_list"], job["instance_list"])
            fields = {**job, "instance_list": merged}
            if self._write(current, fields):
                return {**current, **fields, "version": current["version"] + 1}
        raise CacheConflict(f"job {name} changed {MAX_ATTEMPTS} times while being stored")

    def update_instances(
        self, job_name: str, change: Callable[[list[dict]], list[dict]]
    ) -> tuple[dict, dict] | None:
        """Apply `change` to the instance list; (before, after) docs, None if not cached."""
        for _ in range(MAX_ATTEMPTS):
            current = self.get(job_name)
            if current is None:
                return None
            instances = change(current["instance_list"])
            if instances == current["instance_list"]:
                return current, current
            if self._write(current, {"instance_list": instances}):
                after = {**current, "instance_list": instances, "version": current["version"] + 1}
                return current, after
        raise CacheConflict(f"job {job_name} changed {MAX_ATTEMPTS} times while being updated")

    def _write(self, current: dict, fields: dict) -> bool:
        result = self.jobs.update_one(
            {"_id": current["_id"], "version": current["version"]},
            {"$set": fields, "$inc": {"version": 1}},
        )
        return result.matched_count == 1

    def delete(self, job_name: str) -> dict | None:
        return self.jobs.find_one_and_delete({"_id": job_name})

    # -- interests -------------------------------------------------------------------

    def add_interest(self, job_name: str, node_id: str, job: dict | None = None) -> bool:
        """Record the node's interest; False if the job is not cached (any more).

        `job`, the document just read, saves the write when it already lists the node
        (a node asking again: the common case).
        """
        if job is not None and node_id in job.get("interested_nodes", ()):
            return True
        change = {"$addToSet": {"interested_nodes": node_id}}
        result = self.jobs.update_one({"_id": job_name}, change)
        return result.matched_count == 1

    def remove_interest(self, job_name: str, node_id: str) -> bool:
        """Drop the node's interest; False if the job is not cached."""
        result = self.jobs.update_one({"_id": job_name}, {"$pull": {"interested_nodes": node_id}})
        return result.matched_count == 1

    def forget_if_unused(self, job_name: str) -> bool:
        """Delete the job if no node is interested and no instance runs here; whether it did."""
        runs_here: list[dict] = [{"worker_id": {"$type": "string"}}]
        if self.cluster_id is not None:
            runs_here.append({"cluster_id": self.cluster_id})
        # `$nor` of one `$elemMatch` per condition, not `$or` inside `$elemMatch`: the same
        # documents, and a form every MongoDB-wire server accepts
        result = self.jobs.delete_one(
            {
                "_id": job_name,
                "interested_nodes.0": {"$exists": False},
                "$nor": [{"instance_list": {"$elemMatch": cond}} for cond in runs_here],
            }
        )
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
        return None if doc is None else (doc["node_subnet"], doc["node_subnet_v6"])
