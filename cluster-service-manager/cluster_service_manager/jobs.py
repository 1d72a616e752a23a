"""Pure functions on typed jobs: the cluster's view of a job, with no I/O.

A cached job is a `CachedJob`: the shared `Job` (name, root id, service IPs, instances,
see `oakestra_net.job_model`) plus the store's bookkeeping, the nodes interested in it
and a version for compare-and-set. Instances carry the root's fields, their location
(None while unknown) and, when a node of this cluster reported on them, `reported_by`
(that node) and `worker_id` (the node it runs on, None once undeployed).

This module reads root answers, merges them with what the nodes reported, applies
node reports, and builds the table query answers. Storing is `cache`'s job (it also
converts to and from the store's documents), deciding when to do what is the handlers'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from oakestra_net.job_model import (
    LOCATION_FIELDS,
    ROOT_INSTANCE_FIELDS,
    Instance,
    InvalidJob,
    Job,
    unknown_job_result,
)
from oakestra_net.messages import TableQueryResult
from oakestra_net.services import canonical_ip as canonical_ip  # jobs.canonical_ip for callers

__all__ = [
    "LOCATION_FIELDS",
    "ROOT_INSTANCE_FIELDS",
    "CachedJob",
    "Instance",
    "InvalidJob",
    "Job",
    "canonical_ip",
]

Instances = tuple[Instance, ...]


@dataclass(frozen=True, slots=True)
class CachedJob(Job):
    """A job as the cluster caches it: the nodes interested in it and the store's version."""

    interested_nodes: tuple[str, ...] = ()
    version: int = 1

    @classmethod
    def from_store(cls, doc: Mapping[str, Any]) -> CachedJob:
        job = Job.from_document(doc)
        return cls(
            job.job_name,
            job.job_id,
            job.service_ips,
            job.instances,
            interested_nodes=tuple(doc.get("interested_nodes", ())),
            version=int(doc.get("version", 1)),
        )

    def to_store(self) -> dict[str, Any]:
        return {
            "_id": self.job_name,
            **self.to_document(),
            "interested_nodes": list(self.interested_nodes),
            "version": self.version,
        }


# -- reading root answers -------------------------------------------------------------


def from_root(doc: Any) -> Job:
    """The job in a root table query answer; InvalidJob if it is unusable."""
    return Job.from_root_answer(doc)


# -- merging and node reports ---------------------------------------------------------

_REPORTED = (*LOCATION_FIELDS, "worker_id", "reported_by")


def merge_instances(cached: Iterable[Instance], fresh: Iterable[Instance]) -> Instances:
    """The root's instance list, keeping what this cluster's nodes reported.

    The root decides which instances exist. For an instance a node of this cluster
    reported on (same instance IP and cluster), the node's report wins: it is newer
    than, or equal to, what the root heard from us.
    """
    by_number = {i.instance_number: i for i in cached}
    merged = []
    for instance in fresh:
        mine = by_number.get(instance.instance_number)
        if mine is not None and mine.reported_by and _same_incarnation(mine, instance):
            kept = {name: getattr(mine, name) for name in _REPORTED}
            instance = dataclasses.replace(instance, **kept)
        merged.append(instance)
    return tuple(merged)


def _same_incarnation(a: Instance, b: Instance) -> bool:
    return all(getattr(a, name) == getattr(b, name) for name in ROOT_INSTANCE_FIELDS)


def find_instance(instances: Iterable[Instance], number: int) -> Instance | None:
    return next((i for i in instances if i.instance_number == number), None)


def with_location(
    instances: Sequence[Instance], number: int, node_id: str, location: Mapping[str, Any]
) -> Instances:
    """Instance `number` placed on `node_id` at `location` (the four location fields)."""
    placed = {**location, "worker_id": node_id, "reported_by": node_id}
    return tuple(
        dataclasses.replace(i, **placed) if i.instance_number == number else i for i in instances
    )


def without_location(instances: Sequence[Instance], number: int, node_id: str) -> Instances:
    """Instance `number` no longer runs on `node_id` (a report of another node is kept)."""
    return tuple(
        dataclasses.replace(
            i,
            namespace_ip=None,
            namespace_ip_v6=None,
            host_ip=None,
            host_port=None,
            worker_id=None,
            reported_by=node_id,
        )
        if i.instance_number == number and _on_node_or_nowhere(i, node_id)
        else i
        for i in instances
    )


def with_host(
    instances: Sequence[Instance], node_id: str, number: int, host_ip: str, host_port: int
) -> Instances:
    """Every instance on `node_id`, and instance `number`, now reachable at host_ip:host_port."""
    return tuple(
        dataclasses.replace(
            i, host_ip=host_ip, host_port=host_port, worker_id=node_id, reported_by=node_id
        )
        if i.worker_id == node_id
        or (i.instance_number == number and _on_node_or_nowhere(i, node_id))
        else i
        for i in instances
    )


def _on_node_or_nowhere(instance: Instance, node_id: str) -> bool:
    return instance.worker_id in (None, node_id)


def without_instance(instances: Sequence[Instance], number: int) -> Instances:
    """The list without instance `number`; -1 removes all."""
    return () if number == -1 else tuple(i for i in instances if i.instance_number != number)


def changed_numbers(before: Sequence[Instance], after: Sequence[Instance]) -> list[int]:
    """Numbers of the instances that differ between two versions of an instance list."""
    old = {i.instance_number: i for i in before}
    return sorted(i.instance_number for i in after if old.get(i.instance_number) != i)


def runs_here(instance: Instance, cluster_id: str | None) -> bool:
    """Whether the instance runs on (or is scheduled to) this cluster, as far as we know."""
    if instance.worker_id:
        return True
    return cluster_id is not None and instance.cluster_id == cluster_id


# -- table query answers --------------------------------------------------------------


def table_result(job: Job | None, query_key: str) -> TableQueryResult:
    """The `tablequery/result` for `job` (None: unknown service, empty instance list)."""
    return unknown_job_result(query_key) if job is None else job.table_result(query_key)


def visible_change(before: Job | None, after: Job | None) -> str | None:
    """How the answer a node gets changed: None (not at all), UNDEPLOYMENT, DEPLOYMENT.

    Only such a change is announced on `jobs/<job>/updates_available`, since every
    announcement makes every interested node fetch the table again. UNDEPLOYMENT when
    an instance a node could reach is gone from the answer, else DEPLOYMENT.
    """
    old, new = table_result(before, ""), table_result(after, "")
    if old == new:
        return None
    gone = {i.instance_number for i in old.instance_list} - {
        i.instance_number for i in new.instance_list
    }
    return "UNDEPLOYMENT" if gone else "DEPLOYMENT"
