"""Clusters: registration, identity by caller address, and their service interests.

A cluster is interested in a job once it queried it (by name or IP); only interested
clusters get `/api/net/job/update` pushes. Interest lists change with `$addToSet` /
`$pull` only, never by rewriting the array. A cluster's interest list grows with every
job it follows (10,000 and more), so lookups that identify a caller leave it out, and
an interest already recorded (found through the `interests` index) is not written again.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from oakestra_net.log import get_logger

log = get_logger(__name__)

WITHOUT_INTERESTS = {"interests": 0}


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

    def ensure_indexes(self) -> None:
        self.clusters.create_index("cluster_id", unique=True)
        self.clusters.create_index("cluster_address")
        self.clusters.create_index("interests")

    def register(self, cluster_id: str, address: str, port: int) -> dict:
        doc = {"cluster_address": caller_address(address), "cluster_port": port}
        self.clusters.update_one(
            {"cluster_id": cluster_id},
            {"$set": {**doc, "status": "ACTIVE"}, "$setOnInsert": {"interests": []}},
            upsert=True,
        )
        log.info("cluster registered", cluster_id=cluster_id, **doc)
        return self.clusters.find_one({"cluster_id": cluster_id}, {"_id": 0})

    def by_address(self, remote_addr: str | None, *, interests: bool = False) -> dict | None:
        """The cluster calling from `remote_addr`; its interest list only if asked for."""
        projection = None if interests else WITHOUT_INTERESTS
        return self.clusters.find_one({"cluster_address": caller_address(remote_addr)}, projection)

    def by_id(self, cluster_id: str) -> dict | None:
        return self.clusters.find_one({"cluster_id": cluster_id})

    def add_interest(self, cluster_id: str, job_name: str) -> None:
        if self.clusters.find_one({"cluster_id": cluster_id, "interests": job_name}, {"_id": 1}):
            return
        self.clusters.update_one({"cluster_id": cluster_id}, {"$addToSet": {"interests": job_name}})

    def remove_interest(self, cluster_id: str, job_name: str) -> None:
        self.clusters.update_one({"cluster_id": cluster_id}, {"$pull": {"interests": job_name}})

    def drop_interest_everywhere(self, job_name: str) -> None:
        self.clusters.update_many({"interests": job_name}, {"$pull": {"interests": job_name}})

    def interested_in(self, job_name: str) -> list[dict]:
        """The clusters following the job, without their (long) interest lists."""
        return list(self.clusters.find({"interests": job_name}, WITHOUT_INTERESTS))

    def set_status(self, cluster_id: str, status: str) -> None:
        self.clusters.update_one(
            {"cluster_id": cluster_id, "status": {"$ne": status}}, {"$set": {"status": status}}
        )

    def all(self) -> list[dict]:
        return list(self.clusters.find({}, {"_id": 0}))
