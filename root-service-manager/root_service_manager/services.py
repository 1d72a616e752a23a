"""Services and their instances: the root's source of truth for addresses and locations.

Every operation is idempotent and atomic per MongoDB operation: addresses are
reserved first, then attached with a conditional update; when the update does not
apply (a concurrent caller won), the reservations are released again, so nothing
leaks. A service deploy first claims the job's `_id` and name with a document in
state "allocating"; a concurrent deploy of the same job waits until that claim is
complete (or gone) and answers what it became, so every caller sees the same
addresses and only the claim's owner reserves any. Removing an instance or a service
returns its addresses to the pools. Changes are announced to interested clusters
through the outbox.
"""

from __future__ import annotations

import time
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo.errors import DuplicateKeyError

from oakestra_net.addressing import Pool, PoolExhausted, index_of
from oakestra_net.http_errors import ApiError
from oakestra_net.job_model import JobServiceIp
from oakestra_net.log import get_logger
from oakestra_net.services import CLOSEST, ROUND_ROBIN

from .clusters import Clusters
from .descriptor import ServiceRequest
from .ipam import AddressTaken, Allocator
from .outbox import Outbox

log = get_logger(__name__)

LOCATION_FIELDS = ("namespace_ip", "namespace_ip_v6", "host_ip", "host_port")
ALLOCATING = "allocating"
# How long a deploy waits for a concurrent deploy of the same job to finish allocating;
# a claim older than that belongs to a caller that died and is answered 503.
CLAIM_WAIT_SECONDS = 10.0
SERVICE_IP_KINDS = (
    (ROUND_ROBIN, "rr", Pool.RR_V6),
    (CLOSEST, "closest", Pool.CLOSEST_V6),
)


def object_id(value: Any, field: str = "_id") -> ObjectId:
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        raise ApiError(400, f"{field} must be a 24-character hex object id") from None


class Services:
    def __init__(self, db: Any, allocator: Allocator, clusters: Clusters, outbox: Outbox) -> None:
        self.jobs = db["jobs"]
        self.allocator = allocator
        self.clusters = clusters
        self.outbox = outbox

    def ensure_indexes(self) -> None:
        self.jobs.create_index("job_name", unique=True)

    # -- services -------------------------------------------------------------

    def deploy_service(self, job_id: ObjectId, request: ServiceRequest) -> tuple[dict, bool]:
        """Register a service and give it RR and Closest IPs; (job, created).

        Deploying a job that is still being allocated by a concurrent caller waits for
        that allocation and answers its result, never the half-made document.
        """
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        pause = 0.005
        while True:
            # The claim first: a new job (the usual case) costs one insert, no lookup.
            if self._claim(job_id, request):
                return self._allocate(job_id, request), True
            existing = self._same_job(job_id, request.job_name)
            if existing is not None and existing.get("state") != ALLOCATING:
                return existing, False
            if time.monotonic() > deadline:
                raise ApiError(
                    503, f"{request.job_name} is still being allocated by another request"
                )
            if existing is not None:
                # The claim's owner completes or withdraws it within milliseconds.
                time.sleep(pause)
                pause = min(pause * 2, 0.1)

    def _claim(self, job_id: ObjectId, request: ServiceRequest) -> bool:
        """Insert the job in state "allocating"; False when a concurrent caller was first."""
        doc = {**request.fields, "_id": job_id, "job_name": request.job_name}
        doc.update(service_ip_list=[], instance_list=[], state=ALLOCATING)
        try:
            self.jobs.insert_one(doc)
        except DuplicateKeyError:
            holder = self.jobs.find_one({"_id": job_id}, {"job_name": 1})
            if holder is not None and holder["job_name"] != request.job_name:
                self._conflict(job_id)
            return False  # the same job, or the name under another _id: look again
        return True

    def _allocate(self, job_id: ObjectId, request: ServiceRequest) -> dict:
        """Reserve the service IPs of a claimed job and complete its document."""
        try:
            service_ips = self._reserve_service_ips(request)
        except BaseException:
            self.jobs.delete_one({"_id": job_id, "state": ALLOCATING})
            raise
        # update_one + find_one by _id, not find_one_and_update: both are served from
        # the _id index everywhere, while some MongoDB-wire servers (SecantusDB) scan the
        # collection for every findAndModify. Nobody else completes a claim.
        self.jobs.update_one(
            {"_id": job_id}, {"$set": {"service_ip_list": service_ips}, "$unset": {"state": ""}}
        )
        job = self.jobs.find_one({"_id": job_id})
        log.info("service deployed", job_name=request.job_name, service_ips=service_ips)
        return job

    def remove_service(self, job_id: ObjectId) -> dict:
        job = self.jobs.find_one_and_delete({"_id": job_id, "instance_list": {"$size": 0}})
        if job is None:
            if self.jobs.find_one({"_id": job_id}, {"_id": 1}) is None:
                raise ApiError(404, f"no service with id {job_id}")
            raise ApiError(400, "There are services still deployed: undeploy its instances first")
        for entry in job.get("service_ip_list", []):
            self._release(entry.get("Address"), entry.get("Address_v6"))
        interested = self.clusters.interested_in(job["job_name"])
        self.clusters.drop_interest_everywhere(job["job_name"])
        # Clusters that cache the job must drop it: its service IPs are free again here,
        # and a rebuilding root would take back what a cluster still caches.
        self.outbox.notify(interested, job["job_name"], -1, "UNDEPLOYMENT")
        log.info("service removed", job_name=job["job_name"], clusters_told=len(interested))
        return job

    def _same_job(self, job_id: ObjectId, job_name: str) -> dict | None:
        job = self.jobs.find_one({"job_name": job_name})
        if job is not None and job["_id"] != job_id:
            raise ApiError(409, f"{job_name} is already deployed with _id {job['_id']}")
        return job

    def _conflict(self, job_id: ObjectId) -> dict:
        raise ApiError(409, f"_id {job_id} is already used by another job")

    def _reserve_service_ips(self, request: ServiceRequest) -> list[dict]:
        """RR and Closest addresses, v4 and v6: the chosen ones one by one, the others
        with one request to the store."""
        wanted: list[tuple[Pool, str | None, dict]] = []
        for _ip_type, kind, pool_v6 in SERVICE_IP_KINDS:
            owner = {"kind": kind, "job_name": request.job_name}
            wanted.append((Pool.SERVICE_V4, request.chosen.get(f"{kind}_v4"), owner))
            wanted.append((pool_v6, request.chosen.get(f"{kind}_v6"), owner))
        addresses: list[str | None] = [None] * len(wanted)
        try:
            for index, (pool, chosen, owner) in enumerate(wanted):
                if chosen:
                    addresses[index] = self._reserve(pool, chosen, owner)
            free = [index for index, address in enumerate(addresses) if address is None]
            picked = self._reserve_all([(wanted[i][0], wanted[i][2]) for i in free])
            for index, address in zip(free, picked, strict=True):
                addresses[index] = address
        except BaseException:
            for (pool, _, _), address in zip(wanted, addresses, strict=True):
                self.allocator.release(pool, address)
            raise
        return [
            JobServiceIp(ip_type, addresses[2 * n], addresses[2 * n + 1]).to_document()
            for n, (ip_type, _, _) in enumerate(SERVICE_IP_KINDS)
        ]

    def _reserve(self, pool: Pool, chosen: str | None, owner: dict) -> str:
        try:
            if chosen:
                return self.allocator.reserve_specific(pool, chosen, owner)
            return self.allocator.reserve(pool, owner)
        except AddressTaken as err:
            raise ApiError(400, str(err)) from None
        except PoolExhausted as err:
            raise ApiError(503, str(err)) from None

    def _reserve_all(self, wanted: list[tuple[Pool, dict]]) -> list[str]:
        try:
            return self.allocator.reserve_all(wanted)
        except PoolExhausted as err:
            raise ApiError(503, str(err)) from None

    # -- instances ------------------------------------------------------------

    def deploy_instance(self, job_id: ObjectId, number: int, cluster_id: str) -> dict:
        """Give an instance its instance IPs; again for the same instance changes nothing."""
        job = self._job(job_id)
        current = _instance(job, number)
        if current is not None:
            return self._move_instance(job, current, cluster_id)
        owner = {"kind": "instance", "job_name": job["job_name"], "instance_number": number}
        v4, v6 = self._reserve_all([(Pool.SERVICE_V4, owner), (Pool.INSTANCE_V6, owner)])
        instance = {"instance_number": number, "instance_ip": v4, "instance_ip_v6": v6}
        instance["cluster_id"] = cluster_id
        result = self.jobs.update_one(
            {"_id": job_id, "instance_list.instance_number": {"$ne": number}},
            {"$push": {"instance_list": instance}},
        )
        if result.modified_count == 1:
            log.info("instance deployed", job_name=job["job_name"], **instance)
            return instance
        self._release(v4, v6)  # a concurrent request added it first, or the job left
        return self.deploy_instance(job_id, number, cluster_id)

    def _move_instance(self, job: dict, instance: dict, cluster_id: str) -> dict:
        if instance.get("cluster_id") == cluster_id:
            return instance
        wipe = {f"instance_list.$.{f}": None for f in LOCATION_FIELDS}
        self.jobs.update_one(
            {"_id": job["_id"], "instance_list.instance_number": instance["instance_number"]},
            {"$set": {"instance_list.$.cluster_id": cluster_id, **wipe}},
        )
        log.info("instance moved", job_name=job["job_name"], cluster_id=cluster_id)
        return {**instance, "cluster_id": cluster_id, **dict.fromkeys(LOCATION_FIELDS)}

    def undeploy_instance(self, job_id: ObjectId, number: int) -> list[dict]:
        """Remove one instance (or all with -1); returns the removed instances."""
        if number == -1:
            before = self.jobs.find_one_and_update({"_id": job_id}, {"$set": {"instance_list": []}})
        else:
            before = self.jobs.find_one_and_update(
                {"_id": job_id, "instance_list.instance_number": number},
                {"$pull": {"instance_list": {"instance_number": number}}},
            )
        if before is None:
            self._job(job_id)  # 404 when the job itself is unknown
            return []
        removed = [i for i in before["instance_list"] if number in (-1, i["instance_number"])]
        for instance in removed:
            self._release(instance.get("instance_ip"), instance.get("instance_ip_v6"))
        if removed:
            self.outbox.notify(
                self.clusters.interested_in(before["job_name"]),
                before["job_name"],
                number,
                "UNDEPLOYMENT",
            )
            log.info("instances undeployed", job_name=before["job_name"], count=len(removed))
        return removed

    def update_locations(self, job_id: ObjectId, reports: list[dict]) -> tuple[list, list]:
        """Store where instances run (net_deploy_status); (updated, unknown) numbers."""
        job = self._job(job_id)
        updated, unknown = [], []
        for report in reports:
            number = report["instance_number"]
            fields = {f"instance_list.$.{f}": report[f] for f in LOCATION_FIELDS}
            result = self.jobs.update_one(
                {"_id": job_id, "instance_list.instance_number": number}, {"$set": fields}
            )
            (updated if result.matched_count else unknown).append(number)
        interested = self.clusters.interested_in(job["job_name"])
        for number in updated:
            self.outbox.notify(interested, job["job_name"], number, "DEPLOYMENT")
        return updated, unknown

    # -- lookups --------------------------------------------------------------

    def find_by_name(self, job_name: str) -> dict | None:
        return self.jobs.find_one({"job_name": job_name, "state": {"$exists": False}})

    def find_by_ip(self, address: str) -> dict | None:
        for pool in Pool:
            if index_of(pool, address) is None:
                continue
            owner = self.allocator.owner_of(pool, address)
            if owner and owner.get("job_name"):
                return self.find_by_name(owner["job_name"])
        return None

    def _job(self, job_id: ObjectId) -> dict:
        job = self.jobs.find_one({"_id": job_id})
        if job is None:
            raise ApiError(404, f"no service with id {job_id}")
        return job

    def _release(self, v4: str | None, v6: str | None) -> None:
        """Return a v4 and a v6 service address to whichever pool holds each."""
        for address in (v4, v6):
            for pool in (Pool.SERVICE_V4, Pool.INSTANCE_V6, Pool.RR_V6, Pool.CLOSEST_V6):
                if address and index_of(pool, address) is not None:
                    self.allocator.release(pool, address)


def _instance(job: dict, number: int) -> dict | None:
    return next((i for i in job.get("instance_list", []) if i["instance_number"] == number), None)


def public_job(job: dict) -> dict:
    """A job document as the API returns it: `_id` as a string, internal fields removed."""
    out = {k: v for k, v in job.items() if k != "state"}
    out["_id"] = str(job["_id"])
    return out
