"""Durable outbox for `POST <cluster>/api/net/job/update` pushes.

The request that causes a push only inserts a message (one document per cluster) and
returns; a delivery thread in every server process sends them. Messages to one
cluster go out strictly in order: a process first claims the cluster (a lease on the
cluster document taken with `find_one_and_update`, so several gunicorn workers never
send to the same cluster at once), then sends that cluster's messages oldest first,
stopping at the first failure. A failing cluster is marked `ERROR` and retried with
exponential backoff; when a push is delivered it is `ACTIVE` again. A 4xx answer is
final (the cluster refused the message; retrying cannot help): it is logged and dropped.

The outbox is bounded: a cluster has at most one pending message per job (only the
job's latest state matters to it), so a cluster that never comes back costs one
document per job it follows, however often those jobs change.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import requests
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from oakestra_net.log import get_logger

log = get_logger(__name__)

LEASE_SECONDS = 30.0
MAX_BACKOFF = 30.0
BATCH = 100


def cluster_url(address: str, port: Any) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/api/net/job/update"


def coalesce(pending: dict, new: dict, *, pending_merged: bool = False) -> dict:
    """The one update that stands for `pending` followed by `new` (same cluster and job).

    A `DEPLOYMENT` update makes the cluster fetch the whole job again, which brings
    every change since, removals included; so two different updates coalesce into a
    `DEPLOYMENT`. An `UNDEPLOYMENT` stands for itself when it removes every instance
    (-1), repeats the pending one, or follows a single update of the same instance
    (`pending_merged` says whether `pending` already stands for several).
    """
    if new["type"] == "UNDEPLOYMENT":
        same_instance = new["instance_number"] == pending["instance_number"]
        if new["instance_number"] == -1 or new == pending or (same_instance and not pending_merged):
            return new
    return {**new, "type": "DEPLOYMENT"}


def backoff(attempts: int) -> float:
    return min(0.5 * 2 ** min(attempts, 16), MAX_BACKOFF)


class Outbox:
    def __init__(
        self,
        db: Any,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 2.0,
        session: requests.Session | None = None,
    ) -> None:
        self.messages = db["outbox"]
        self.counters = db["counters"]
        self.clusters = db["clusters"]
        self.clock = clock
        self.timeout = timeout
        self.session = session or requests.Session()
        self.owner = uuid.uuid4().hex
        self.delivered = 0
        self.failed_attempts = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ensure_indexes(self) -> None:
        self.messages.create_index([("cluster_id", 1), ("seq", 1)])

    def notify(
        self, clusters: Iterable[dict], job_name: str, instance_number: int, kind: str
    ) -> None:
        """Queue the update for every cluster (coalesced with its pending one); returns at once."""
        body = {"job_name": job_name, "instance_number": instance_number, "type": kind}
        for cluster in clusters:
            sent = self._queue(cluster["cluster_id"], body)
            log.info("update queued", cluster_id=cluster["cluster_id"], **sent)
        self._wake.set()

    def _queue(self, cluster_id: str, body: dict) -> dict:
        """Insert the one pending message of (cluster, job), or replace the pending one.

        The replacement takes a new sequence number (it goes out after everything
        queued before it) and keeps the backoff of the message it replaces. The
        compare-and-set on `seq` makes a concurrent delivery or notify retry, never lose.
        """
        key = f"{cluster_id}/{body['job_name']}"
        while True:
            seq = self._next_seq()
            pending = self.messages.find_one({"_id": key})
            if pending is None:
                try:
                    self.messages.insert_one(
                        {
                            "_id": key,
                            "seq": seq,
                            "cluster_id": cluster_id,
                            "body": body,
                            "attempts": 0,
                            "next_attempt_at": 0.0,
                            "created_at": self.clock(),
                        }
                    )
                except DuplicateKeyError:
                    continue
                return body
            merged = coalesce(pending["body"], body, pending_merged=pending.get("merged", False))
            replaced = self.messages.update_one(
                {"_id": key, "seq": pending["seq"]},
                {"$set": {"seq": seq, "body": merged, "merged": merged != body}},
            )
            if replaced.matched_count == 1:
                return merged

    def depth(self) -> int:
        return self.messages.count_documents({})

    # -- delivery -------------------------------------------------------------

    def start(self, interval: float = 0.5) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="outbox", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self.deliver_pending()
            except Exception:  # noqa: BLE001 - the delivery thread must survive a bad round
                log.exception("outbox delivery round failed")

    def deliver_pending(self) -> None:
        for cluster_id in self.messages.distinct("cluster_id"):
            if self._claim(cluster_id):
                try:
                    self._deliver_cluster(cluster_id)
                finally:
                    self._release(cluster_id)

    def _deliver_cluster(self, cluster_id: str) -> None:
        cluster = self.clusters.find_one({"cluster_id": cluster_id})
        if cluster is None:
            dropped = self.messages.delete_many({"cluster_id": cluster_id}).deleted_count
            log.warning("updates dropped: cluster unknown", cluster_id=cluster_id, count=dropped)
            return
        url = cluster_url(cluster["cluster_address"], cluster["cluster_port"])
        for message in self.messages.find({"cluster_id": cluster_id}).sort("seq", 1).limit(BATCH):
            if message["next_attempt_at"] > self.clock() or not self._send(url, message):
                return
            # A newer state of the job replaced the message while it was sent: keep that.
            self.messages.delete_one({"_id": message["_id"], "seq": message.get("seq")})

    def _send(self, url: str, message: dict) -> bool:
        cluster_id = message["cluster_id"]
        try:
            response = self.session.post(url, json=message["body"], timeout=self.timeout)
        except requests.RequestException as err:
            return self._failed(message, f"{type(err).__name__}: {err}")
        if response.status_code == 200:
            self.delivered += 1
            self._set_status(cluster_id, "ACTIVE")
            log.info("update delivered", cluster_id=cluster_id, **message["body"])
            return True
        if 400 <= response.status_code < 500:
            log.error(
                "update refused by cluster, dropped",
                cluster_id=cluster_id,
                status=response.status_code,
                answer=response.text[:200],
                **message["body"],
            )
            return True
        return self._failed(message, f"HTTP {response.status_code}")

    def _failed(self, message: dict, reason: str) -> bool:
        self.failed_attempts += 1
        attempts = message["attempts"] + 1
        delay = backoff(attempts)
        self.messages.update_one(
            {"_id": message["_id"]},
            {"$set": {"attempts": attempts, "next_attempt_at": self.clock() + delay}},
        )
        self._set_status(message["cluster_id"], "ERROR")
        log.warning(
            "update delivery failed, will retry",
            cluster_id=message["cluster_id"],
            reason=reason,
            attempts=attempts,
            retry_in=delay,
        )
        return False

    def _set_status(self, cluster_id: str, status: str) -> None:
        self.clusters.update_one(
            {"cluster_id": cluster_id, "status": {"$ne": status}}, {"$set": {"status": status}}
        )

    def _claim(self, cluster_id: str) -> bool:
        now = self.clock()
        lease = self.clusters.find_one_and_update(
            {
                "cluster_id": cluster_id,
                "$or": [{"outbox_lease_until": {"$lt": now}}, {"outbox_lease_owner": self.owner}],
            },
            {"$set": {"outbox_lease_until": now + LEASE_SECONDS, "outbox_lease_owner": self.owner}},
            return_document=ReturnDocument.AFTER,
        )
        if lease is not None:
            return True
        # A cluster document without a lease field yet, or an unknown cluster.
        unleased = self.clusters.find_one_and_update(
            {"cluster_id": cluster_id, "outbox_lease_until": {"$exists": False}},
            {"$set": {"outbox_lease_until": now + LEASE_SECONDS, "outbox_lease_owner": self.owner}},
        )
        return unleased is not None or self.clusters.find_one({"cluster_id": cluster_id}) is None

    def _release(self, cluster_id: str) -> None:
        self.clusters.update_one(
            {"cluster_id": cluster_id, "outbox_lease_owner": self.owner},
            {"$set": {"outbox_lease_until": 0.0}},
        )

    def _next_seq(self) -> int:
        doc = self.counters.find_one_and_update(
            {"_id": "outbox"},
            {"$inc": {"value": 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        return int(doc["value"])
