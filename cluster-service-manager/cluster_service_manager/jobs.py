"""Pure functions on job documents: the cluster's view of a job, with no I/O.

A cached job is `{job_name, job_id, service_ip_list, instance_list}` (plus the
store's bookkeeping: `interested_nodes`, `version`). Instances carry the root's
fields (`instance_number`, `instance_ip`, `instance_ip_v6`, `cluster_id`), their
location (`namespace_ip`, `namespace_ip_v6`, `host_ip`, `host_port`; None while
unknown) and, when a node of this cluster reported on them, `reported_by` (that
node) and `worker_id` (the node it runs on, absent once undeployed).

This module reads root answers, merges them with what the nodes reported, applies
node reports, and builds the table query answers of reference §3. Storing is
`cache`'s job, deciding when to do what is the handlers'.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from oakestra_net.messages import ServiceIp, TableQueryInstance, TableQueryResult
from oakestra_net.names import InvalidName, parse_job_name
from oakestra_net.services import INSTANCE_IP, JOB_KINDS
from oakestra_net.services import canonical_ip as canonical_ip  # jobs.canonical_ip for callers

LOCATION_FIELDS = ("namespace_ip", "namespace_ip_v6", "host_ip", "host_port")
ROOT_INSTANCE_FIELDS = ("instance_ip", "instance_ip_v6", "cluster_id")
NODE_FIELDS = ("worker_id", "reported_by")
SERVICE_IP_TYPES = JOB_KINDS
MAX_INSTANCE_NUMBER = 2**63 - 1


class InvalidJob(ValueError):
    """A job document (from the root) that cannot be used; the message says why."""


# -- reading root answers -------------------------------------------------------------


def from_root(doc: Any) -> dict:
    """The cached form of a root table query answer; InvalidJob if it is unusable."""
    if not isinstance(doc, dict):
        raise InvalidJob(f"job document must be an object, got {type(doc).__name__}")
    try:
        job_name = str(parse_job_name(doc.get("job_name")))
    except InvalidName as err:
        raise InvalidJob(f"job document has no valid job_name: {err}") from None
    job_id = doc.get("_id")
    if not isinstance(job_id, str) or not job_id:
        raise InvalidJob(f"job {job_name} has no _id string")
    return {
        "job_name": job_name,
        "job_id": job_id,
        "service_ip_list": _service_ips(job_name, doc.get("service_ip_list")),
        "instance_list": _instances(job_name, doc.get("instance_list")),
    }


def _service_ips(job_name: str, entries: Any) -> list[dict]:
    if not isinstance(entries, list):
        raise InvalidJob(f"job {job_name}: service_ip_list must be a list")
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("IpType") not in SERVICE_IP_TYPES:
            raise InvalidJob(f"job {job_name}: bad service_ip_list entry {entry!r:.100}")
        out.append(
            {
                "IpType": entry["IpType"],
                "Address": _text(entry.get("Address")),
                "Address_v6": _text(entry.get("Address_v6")),
            }
        )
    return out


def _instances(job_name: str, entries: Any) -> list[dict]:
    if not isinstance(entries, list):
        raise InvalidJob(f"job {job_name}: instance_list must be a list")
    out = []
    for entry in entries:
        number = entry.get("instance_number") if isinstance(entry, dict) else None
        if isinstance(number, bool) or not isinstance(number, int):
            raise InvalidJob(f"job {job_name}: instance without instance_number: {entry!r:.100}")
        instance = {"instance_number": number}
        for name in ROOT_INSTANCE_FIELDS:
            instance[name] = _text(entry.get(name))
        for name in LOCATION_FIELDS:
            instance[name] = _location_value(name, entry.get(name))
        out.append(instance)
    return out


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    return None


def _location_value(name: str, value: Any) -> str | int | None:
    if name != "host_port":
        return _text(value) or None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        return None
    return value


# -- merging and node reports ---------------------------------------------------------


def merge_instances(cached: Iterable[dict], fresh: Iterable[dict]) -> list[dict]:
    """The root's instance list, keeping what this cluster's nodes reported.

    The root decides which instances exist. For an instance a node of this cluster
    reported on (same instance IP and cluster), the node's report wins: it is newer
    than, or equal to, what the root heard from us.
    """
    by_number = {i["instance_number"]: i for i in cached}
    merged = []
    for instance in fresh:
        mine = by_number.get(instance["instance_number"])
        if mine is not None and mine.get("reported_by") and _same_incarnation(mine, instance):
            kept = {k: mine[k] for k in (*LOCATION_FIELDS, *NODE_FIELDS) if k in mine}
            merged.append({**instance, **kept})
        else:
            merged.append(dict(instance))
    return merged


def _same_incarnation(a: dict, b: dict) -> bool:
    return all(a.get(name) == b.get(name) for name in ROOT_INSTANCE_FIELDS)


def find_instance(instances: Iterable[dict], number: int) -> dict | None:
    return next((i for i in instances if i["instance_number"] == number), None)


def with_location(instances: list[dict], number: int, node_id: str, location: dict) -> list:
    """Instance `number` placed on `node_id` at `location` (the four location fields)."""
    placed = {**location, "worker_id": node_id, "reported_by": node_id}
    return [{**i, **placed} if i["instance_number"] == number else i for i in instances]


def without_location(instances: list[dict], number: int, node_id: str) -> list:
    """Instance `number` no longer runs on `node_id` (a report of another node is kept)."""
    out = []
    for instance in instances:
        if instance["instance_number"] == number and _on_node_or_nowhere(instance, node_id):
            instance = {k: v for k, v in instance.items() if k != "worker_id"}
            instance.update(dict.fromkeys(LOCATION_FIELDS), reported_by=node_id)
        out.append(instance)
    return out


def with_host(
    instances: list[dict], node_id: str, number: int, host_ip: str, host_port: int
) -> list:
    """Every instance on `node_id`, and instance `number`, now reachable at host_ip:host_port."""
    moved = {"host_ip": host_ip, "host_port": host_port, "worker_id": node_id}
    moved["reported_by"] = node_id
    return [
        {**i, **moved}
        if i.get("worker_id") == node_id
        or (i["instance_number"] == number and _on_node_or_nowhere(i, node_id))
        else i
        for i in instances
    ]


def _on_node_or_nowhere(instance: dict, node_id: str) -> bool:
    return instance.get("worker_id") in (None, node_id)


def without_instance(instances: list[dict], number: int) -> list:
    """The list without instance `number`; -1 removes all."""
    return [] if number == -1 else [i for i in instances if i["instance_number"] != number]


def changed_numbers(before: list[dict], after: list[dict]) -> list[int]:
    """Numbers of the instances that differ between two versions of an instance list."""
    old = {i["instance_number"]: i for i in before}
    return sorted(i["instance_number"] for i in after if old.get(i["instance_number"]) != i)


def runs_here(instance: dict, cluster_id: str | None) -> bool:
    """Whether the instance runs on (or is scheduled to) this cluster, as far as we know."""
    if instance.get("worker_id"):
        return True
    return cluster_id is not None and instance.get("cluster_id") == cluster_id


def is_located(instance: dict) -> bool:
    """Whether a node can reach the instance: namespace IP and host address known."""
    known = instance.get("namespace_ip") and instance.get("host_ip")
    return bool(known and instance_port(instance))


def instance_port(instance: dict) -> int:
    port = instance.get("host_port")
    return port if isinstance(port, int) and not isinstance(port, bool) else 0


def location_report(instance: dict) -> dict:
    """One entry of a `net_deploy_status` report (null fields: no location any more)."""
    return {
        "instance_number": instance["instance_number"],
        "namespace_ip": instance.get("namespace_ip"),
        "namespace_ip_v6": instance.get("namespace_ip_v6"),
        "host_ip": instance.get("host_ip"),
        "host_port": instance.get("host_port"),
    }


# -- table query answers --------------------------------------------------------------


def table_result(job: dict | None, query_key: str) -> TableQueryResult:
    """The `tablequery/result` for `job` (None: unknown service, empty instance list).

    Instances whose location is not known yet are left out (and any without a cluster
    id, which nodes would reject the whole answer for); every instance lists the job's
    service IPs followed by its own `instance_ip` entry.
    """
    if job is None:
        return TableQueryResult(app_name=None, query_key=query_key, instance_list=())
    service_ips = tuple(
        ServiceIp(e["IpType"], e.get("Address") or "", e.get("Address_v6") or "")
        for e in job.get("service_ip_list", [])
        if e.get("IpType") in SERVICE_IP_TYPES
    )
    instances = tuple(
        _result_instance(instance, service_ips)
        for instance in job.get("instance_list", [])
        if is_located(instance) and instance.get("cluster_id")
    )
    return TableQueryResult(app_name=job["job_name"], query_key=query_key, instance_list=instances)


def visible_change(before: dict | None, after: dict | None) -> str | None:
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


def _result_instance(instance: dict, service_ips: tuple[ServiceIp, ...]) -> TableQueryInstance:
    own = ServiceIp(
        INSTANCE_IP.value, instance.get("instance_ip") or "", instance.get("instance_ip_v6") or ""
    )
    return TableQueryInstance(
        instance_number=instance["instance_number"],
        instance_ip=instance.get("instance_ip") or "",
        instance_ip_v6=instance.get("instance_ip_v6") or "",
        cluster_id=instance.get("cluster_id") or "",
        namespace_ip=instance.get("namespace_ip") or "",
        namespace_ip_v6=instance.get("namespace_ip_v6") or "",
        host_ip=instance.get("host_ip") or "",
        host_port=instance_port(instance),
        service_ip=(*service_ips, own),
        worker_id=instance.get("worker_id") or None,
    )
