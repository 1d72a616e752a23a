"""Noticing a root that lost its store, and telling it what this cluster knows is in use.

The root's store has a generation (`GET /api/net/state`); a new one means the root
forgot its services, addresses and registered clusters, while this cluster's nodes
still use them. Every `interval` seconds (and at once when a root call is refused
because the root does not know this cluster) the watch compares the generation with
the last one it served; on a change it registers the cluster again and pushes its
state. It registers with `CLUSTER_ID`/`CLUSTER_ADDRESS` when configured, else as the
previous root had registered it (Oakestra's system manager registers clusters; the
root tells each cluster its registration, which the watch keeps in the store). The
state is: every cached job with its service and
instance IPs, and its nodes' subnets. The root then reserves exactly those before it
allocates anything new. A root without that endpoint (upstream's) is asked again
only every `UNSUPPORTED_INTERVAL` seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from oakestra_net.log import get_logger

from .cache import JobCache
from .jobs import LOCATION_FIELDS, ROOT_INSTANCE_FIELDS
from .root_client import NotFound, RootClient, RootError, RootRejected

log = get_logger(__name__)

UNSUPPORTED_INTERVAL = 60.0
REGISTRATION_ID = "root_registration"


def snapshot(cache: JobCache) -> dict:
    """What this cluster knows is in use, in the shape `POST /api/net/cluster/state` takes."""
    jobs = []
    for doc in cache.jobs.find({}):
        instances = [
            {
                "instance_number": i["instance_number"],
                **{k: i.get(k) for k in (*ROOT_INSTANCE_FIELDS, *LOCATION_FIELDS)},
            }
            for i in doc.get("instance_list", [])
        ]
        jobs.append(
            {
                "job_id": doc.get("job_id"),
                "job_name": doc["_id"],
                "service_ip_list": doc.get("service_ip_list", []),
                "instance_list": instances,
            }
        )
    subnets = [
        {"subnet_addr": n.get("node_subnet"), "subnet_addr_v6": n.get("node_subnet_v6")}
        for n in cache.nodes.find({})
    ]
    return {"jobs": jobs, "subnets": subnets + cache.remembered_root_subnets()}


class RootWatch:
    def __init__(
        self,
        root: RootClient,
        cache: JobCache,
        registration: tuple[str, str, int] | None,
        *,
        interval: float = 1.0,
        state: Callable[[], dict] | None = None,
        meta: Any = None,
        drop_interest: Callable[[str], None] | None = None,
        refill: Callable[[str], object] | None = None,
        dropping: Callable[[], set[str]] = set,
    ) -> None:
        """`refill(job_name)` fetches a job from the root into the cache: after this
        process starts, every job the root records our interest in is fetched once,
        except those `dropping()` names (root interest removals still to be sent, e.g.
        journaled by the previous process: refilled, they would be kept for good)."""
        self.root = root
        self.cache = cache
        self.registration = registration
        self.interval = interval
        self._state = state or (lambda: snapshot(cache))
        self._drop_interest = drop_interest or (lambda _job_name: None)
        self._refill = refill
        self._dropping = dropping
        self.refilled = refill is None  # the cache holds what the root says we follow
        self.subnets_kept = False  # the root's record of our nodes' subnets is kept
        self.generation: str | None = None  # the root generation that has our state
        # where the registration the root told us is kept (default: beside the cache)
        self._meta = meta if meta is not None else cache.nodes.database["cluster_meta"]
        self.pushes = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="root-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def trigger(self) -> None:
        """Check now: a root call said the root does not know this cluster."""
        self.generation = None
        self._wake.set()

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                delay = self.check()
            except Exception:  # noqa: BLE001 - the watch must survive a bad round
                log.exception("root watch round failed")
                delay = self.interval

    def check(self) -> float:
        """One round; the seconds until the next."""
        # read before the state: a removal done in between is then skipped, not refilled
        dropping = self._dropping() if not self.refilled else set()
        try:  # the lists of interests and subnets are needed until both were taken
            state = self.root.root_state(brief=self.refilled and self.subnets_kept)
        except NotFound:
            return UNSUPPORTED_INTERVAL
        except RootError as err:
            log.debug("root state unavailable", reason=str(err))
            return self.interval
        generation = state["generation"]
        self._remember(state.get("cluster"))
        if not self.refilled:
            self._refill_cache([j for j in state.get("interests") or [] if j not in dropping])
        if not self.subnets_kept:
            self._keep_subnets(state.get("subnets"))
        if generation == self.generation:
            return self.interval
        try:
            self._tell(generation, known=isinstance(state.get("cluster"), dict))
        except RootError as err:
            log.warning("could not give the root our state, will retry", reason=str(err))
            return self.interval
        self.generation = generation
        return self.interval

    def _refill_cache(self, job_names: list[str]) -> None:
        """Fetch every job the root says we follow (a cache lost with the process, e.g.
        the embedded store, would otherwise give a root that loses its store next an
        incomplete state, and it would hand out addresses our nodes still use). Retried
        next round until every fetch was answered."""
        assert self._refill is not None
        for job_name in job_names:
            try:
                self._refill(job_name)
            except RootRejected as err:  # final: the root will not give us that job
                log.warning("cache refill: job refused", job_name=job_name, reason=str(err))
            except RootError as err:
                log.info("cache refill incomplete, will retry", job_name=job_name, reason=str(err))
                return
        self.refilled = True
        log.info("cache refilled from the root's record of our interests", jobs=len(job_names))

    def _keep_subnets(self, subnets: Any) -> None:
        """Once per process: the node subnets the root records for us (see the cache)."""
        self.subnets_kept = True
        if not isinstance(subnets, dict):
            return  # a root without the field
        v4, v6 = subnets.get("v4"), subnets.get("v6")
        strings = [a for a in (v4 or []) + (v6 or []) if isinstance(a, str)]
        if isinstance(v4, list) and isinstance(v6, list) and len(strings) == len(v4) + len(v6):
            self.cache.remember_root_subnets(v4, v6)
            log.info("node subnets the root records for us kept", v4=len(v4), v6=len(v6))

    def _remember(self, cluster: Any) -> None:
        """Keep how the root registered us, to register the same way with a new root."""
        if self.registration is not None or not isinstance(cluster, dict):
            return
        try:
            known = (str(cluster["cluster_id"]), str(cluster["cluster_address"]))
            registration = (*known, int(cluster["cluster_port"]))
        except (KeyError, TypeError, ValueError):
            return
        self._meta.update_one(
            {"_id": REGISTRATION_ID}, {"$set": {"registration": list(registration)}}, upsert=True
        )

    def can_register(self) -> bool:
        return self._registration(known=False) is not None

    def _registration(self, known: bool) -> tuple[str, str, int] | None:
        """How to register now: as configured, else as before if the root forgot us."""
        if self.registration is not None:
            return self.registration
        doc = None if known else self._meta.find_one({"_id": REGISTRATION_ID})
        if doc is None:
            return None
        cluster_id, address, port = doc["registration"]
        return str(cluster_id), str(address), int(port)

    def _tell(self, generation: str, known: bool) -> None:
        registration = self._registration(known)
        if registration is not None:
            self.root.register_cluster(*registration)
        pushed: dict[str, Any] = self._state()
        answer = self.root.push_state(pushed)
        self.pushes += 1
        conflicts = answer.get("conflicts") or []
        log.info(
            "state given to the root",
            generation=generation,
            registered=registration is not None,
            jobs=len(pushed["jobs"]),
            subnets=len(pushed["subnets"]),
            reserved=answer.get("reserved"),
            conflicts=len(conflicts),
        )
        for conflict in conflicts[:20]:
            log.error("root reports an address conflict", conflict=str(conflict)[:200])
        # The push gave the root our interest in every job of the snapshot; a job that
        # left the cache meanwhile must lose it again (its removal may have come first).
        for job in pushed["jobs"]:
            if self.cache.get(job["job_name"]) is None:
                self._drop_interest(job["job_name"])
