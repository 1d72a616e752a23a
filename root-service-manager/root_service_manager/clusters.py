"""Clusters: registration, identity by caller address, and their service interests.

A cluster is interested in a job once it queried it (by name or IP); only interested
clusters get `/api/net/job/update` pushes. Each interest is one document of its own in
`cluster_interests` (`cluster_id`, `job_name`, unique together), so recording or
dropping one costs the same with 10 or 10,000 interests. They used to be an array in the
cluster document, where every `$addToSet` rewrote the whole document and its multikey
index entries (46 ms at 2,000 interests on SecantusDB); `ensure_indexes` moves such
arrays into the collection. Callers still see `interests` in a cluster document where
they ask for it (`interests=True`), sorted.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pymongo.errors import DuplicateKeyError, OperationFailure

from oakestra_net.log import get_logger

log = get_logger(__name__)

INTERESTS = "cluster_interests"
INDEX_NOT_FOUND = 27  # MongoDB's error code


def caller_address(remote_addr: str | None) -> str:
    """The caller's address as clusters are registered: IPv4-mapped IPv6 reduced to IPv4."""
    if not remote_addr:
        return ""
    try:
        address = ipaddress.ip_address(remote_addr.split("%")[0])
    except ValueError:
        return remote_addr
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


class Clusters:
    def __init__(self, db: Any) -> None:
        self.clusters = db["clusters"]
        self.interests = db[INTERESTS]

    def ensure_indexes(self) -> None:
        self.clusters.create_index("cluster_id", unique=True)
        self.clusters.create_index("cluster_address")
        # job_name first: the embedded store checks uniqueness through the first field
        # (every interest of a cluster shares its cluster_id), and it serves interested_in.
        self.interests.create_index([("job_name", 1), ("cluster_id", 1)], unique=True)
        self.interests.create_index("cluster_id")
        self._move_interest_arrays()

    def _move_interest_arrays(self) -> None:
        """Interests stored by an earlier version, as an array in the cluster document."""
        for doc in self.clusters.find({"interests": {"$exists": True}}):
            for job_name in doc.get("interests") or []:
                self.add_interest(doc["cluster_id"], job_name)
            self.clusters.update_one({"_id": doc["_id"]}, {"$unset": {"interests": ""}})
            log.info("interests moved to their own collection", cluster_id=doc["cluster_id"])
        if "interests_1" in self.clusters.index_information():
            try:
                self.clusters.drop_index("interests_1")
            except OperationFailure as err:
                # another worker starting at the same time dropped it first
                if err.code != INDEX_NOT_FOUND and "index not found" not in str(err):
                    raise

    def register(self, cluster_id: str, address: str, port: int) -> dict:
        doc = {"cluster_address": caller_address(address), "cluster_port": port}
        self.clusters.update_one(
            {"cluster_id": cluster_id}, {"$set": {**doc, "status": "ACTIVE"}}, upsert=True
        )
        log.info("cluster registered", cluster_id=cluster_id, **doc)
        return self._with_interests(self.clusters.find_one({"cluster_id": cluster_id}, {"_id": 0}))

    def by_address(self, remote_addr: str | None, *, interests: bool = False) -> dict | None:
        """The cluster calling from `remote_addr`; its interest list only if asked for."""
        cluster = self.clusters.find_one({"cluster_address": caller_address(remote_addr)})
        return self._with_interests(cluster) if interests else cluster

    def by_id(self, cluster_id: str) -> dict | None:
        return self._with_interests(self.clusters.find_one({"cluster_id": cluster_id}))

    def interests_of(self, cluster_id: str) -> list[str]:
        found = self.interests.find({"cluster_id": cluster_id}, {"job_name": 1, "_id": 0})
        return sorted(doc["job_name"] for doc in found)

    def add_interest(self, cluster_id: str, job_name: str) -> None:
        try:
            self.interests.insert_one({"cluster_id": cluster_id, "job_name": job_name})
        except DuplicateKeyError:
            pass  # recorded before: one write, never a second document

    def remove_interest(self, cluster_id: str, job_name: str) -> None:
        self.interests.delete_one({"cluster_id": cluster_id, "job_name": job_name})

    def drop_interest_everywhere(self, job_name: str) -> None:
        self.interests.delete_many({"job_name": job_name})

    def interested_in(self, job_name: str) -> list[dict]:
        """The clusters following the job."""
        found = self.interests.find({"job_name": job_name}, {"cluster_id": 1, "_id": 0})
        cluster_ids = [doc["cluster_id"] for doc in found]
        if not cluster_ids:
            return []
        return list(self.clusters.find({"cluster_id": {"$in": cluster_ids}}))

    def set_status(self, cluster_id: str, status: str) -> None:
        self.clusters.update_one(
            {"cluster_id": cluster_id, "status": {"$ne": status}}, {"$set": {"status": status}}
        )

    def _with_interests(self, cluster: dict | None) -> dict | None:
        if cluster is None:
            return None
        return {**cluster, "interests": self.interests_of(cluster["cluster_id"])}
