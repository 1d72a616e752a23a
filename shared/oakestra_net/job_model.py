"""Jobs and their instances as typed values: the shape root and cluster store and answer.

A job has a name, the root's `_id` (as text), one entry per service-IP kind it owns
(`JobServiceIp`: RR and Closest, each with an IPv4 and an IPv6 address) and its
instances. An `Instance` carries the root's fields (number, instance IPs, cluster),
where it runs (namespace IPs, host address and port; None while unknown) and, in the
cluster, which node of the cluster reported on it (`reported_by`) and runs it
(`worker_id`).

`from_document` reads the store's shape (and the root's table query answer, which is
the same document), validating what came from outside; `to_document` writes it back
unchanged in form; `Job.table_result` is the wire answer of a node's table query.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from oakestra_net.messages import ServiceIp, TableQueryInstance, TableQueryResult
from oakestra_net.names import InvalidName, parse_job_name
from oakestra_net.services import INSTANCE_IP, JOB_KINDS, ServiceIpKind

LOCATION_FIELDS = ("namespace_ip", "namespace_ip_v6", "host_ip", "host_port")
ROOT_INSTANCE_FIELDS = ("instance_ip", "instance_ip_v6", "cluster_id")
NODE_FIELDS = ("worker_id", "reported_by")


class InvalidJob(ValueError):
    """A job document that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class JobServiceIp:
    """The job's address pair of one kind (RR or Closest), as `service_ip_list` holds it."""

    kind: ServiceIpKind
    address: str | None
    address_v6: str | None

    @classmethod
    def from_document(cls, job_name: str, entry: Any) -> JobServiceIp:
        if not isinstance(entry, dict) or entry.get("IpType") not in JOB_KINDS:
            raise InvalidJob(f"job {job_name}: bad service_ip_list entry {entry!r:.100}")
        return cls(
            ServiceIpKind(entry["IpType"]),
            _text(entry.get("Address")),
            _text(entry.get("Address_v6")),
        )

    def to_document(self) -> dict[str, Any]:
        return {"IpType": self.kind.value, "Address": self.address, "Address_v6": self.address_v6}

    def to_wire(self) -> ServiceIp:
        return ServiceIp(self.kind.value, self.address or "", self.address_v6 or "")


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance of a job: root's fields, its location, and who reported it."""

    instance_number: int
    instance_ip: str | None = None
    instance_ip_v6: str | None = None
    cluster_id: str | None = None
    namespace_ip: str | None = None
    namespace_ip_v6: str | None = None
    host_ip: str | None = None
    host_port: int | None = None
    worker_id: str | None = None
    reported_by: str | None = None

    @classmethod
    def from_document(cls, job_name: str, entry: Any) -> Instance:
        """An instance from the store or a root answer; node fields only if present."""
        number = entry.get("instance_number") if isinstance(entry, dict) else None
        if isinstance(number, bool) or not isinstance(number, int):
            raise InvalidJob(f"job {job_name}: instance without instance_number: {entry!r:.100}")
        return cls(
            instance_number=number,
            instance_ip=_text(entry.get("instance_ip")),
            instance_ip_v6=_text(entry.get("instance_ip_v6")),
            cluster_id=_text(entry.get("cluster_id")),
            namespace_ip=_text(entry.get("namespace_ip")) or None,
            namespace_ip_v6=_text(entry.get("namespace_ip_v6")) or None,
            host_ip=_text(entry.get("host_ip")) or None,
            host_port=_port(entry.get("host_port")),
            worker_id=_text(entry.get("worker_id")) or None,
            reported_by=_text(entry.get("reported_by")) or None,
        )

    def to_document(self) -> dict[str, Any]:
        """The store's form: root and location fields always, node fields when known."""
        doc: dict[str, Any] = {"instance_number": self.instance_number}
        for name in (*ROOT_INSTANCE_FIELDS, *LOCATION_FIELDS):
            doc[name] = getattr(self, name)
        for name in NODE_FIELDS:
            if getattr(self, name) is not None:
                doc[name] = getattr(self, name)
        return doc

    @property
    def port(self) -> int:
        return self.host_port or 0

    @property
    def is_located(self) -> bool:
        """Whether a node can reach the instance: namespace IP and host address known."""
        return bool(self.namespace_ip and self.host_ip and self.port)

    def location_report(self) -> dict[str, Any]:
        """One entry of a `net_deploy_status` report (null fields: no location any more)."""
        return {"instance_number": self.instance_number} | {
            name: getattr(self, name) for name in LOCATION_FIELDS
        }

    def to_wire(self, service_ips: tuple[ServiceIp, ...]) -> TableQueryInstance:
        """The table query answer's entry: the job's service IPs, then its own instance IP."""
        own = ServiceIp(INSTANCE_IP.value, self.instance_ip or "", self.instance_ip_v6 or "")
        return TableQueryInstance(
            instance_number=self.instance_number,
            instance_ip=self.instance_ip or "",
            instance_ip_v6=self.instance_ip_v6 or "",
            cluster_id=self.cluster_id or "",
            namespace_ip=self.namespace_ip or "",
            namespace_ip_v6=self.namespace_ip_v6 or "",
            host_ip=self.host_ip or "",
            host_port=self.port,
            service_ip=(*service_ips, own),
            worker_id=self.worker_id,
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A service as root and cluster know it: name, root `_id`, service IPs, instances."""

    job_name: str
    job_id: str
    service_ips: tuple[JobServiceIp, ...]
    instances: tuple[Instance, ...]

    @classmethod
    def from_root_answer(cls, doc: Any) -> Job:
        """A job from the root's table query answer (its `_id` is the job id)."""
        return cls.from_document(doc, id_field="_id")

    @classmethod
    def from_document(cls, doc: Any, *, id_field: str = "job_id") -> Job:
        """A job from the cluster's store; InvalidJob (saying why) if it is unusable."""
        if not isinstance(doc, Mapping):
            raise InvalidJob(f"job document must be an object, got {type(doc).__name__}")
        try:
            job_name = str(parse_job_name(doc.get("job_name")))
        except InvalidName as err:
            raise InvalidJob(f"job document has no valid job_name: {err}") from None
        job_id = doc.get(id_field)
        if not isinstance(job_id, str) or not job_id:
            raise InvalidJob(f"job {job_name} has no _id string")
        service_ips, instances = doc.get("service_ip_list"), doc.get("instance_list")
        if not isinstance(service_ips, list):
            raise InvalidJob(f"job {job_name}: service_ip_list must be a list")
        if not isinstance(instances, list):
            raise InvalidJob(f"job {job_name}: instance_list must be a list")
        return cls(
            job_name,
            job_id,
            tuple(JobServiceIp.from_document(job_name, e) for e in service_ips),
            tuple(Instance.from_document(job_name, e) for e in instances),
        )

    def to_document(self) -> dict[str, Any]:
        """The cluster store's form (its bookkeeping fields are the cache's)."""
        return {
            "job_name": self.job_name,
            "job_id": self.job_id,
            "service_ip_list": [e.to_document() for e in self.service_ips],
            "instance_list": [i.to_document() for i in self.instances],
        }

    def table_result(self, query_key: str) -> TableQueryResult:
        """The `tablequery/result` for this job.

        Instances whose location is not known yet are left out (and any without a
        cluster id, which nodes would reject the whole answer for).
        """
        service_ips = tuple(e.to_wire() for e in self.service_ips)
        located = (i for i in self.instances if i.is_located and i.cluster_id)
        return TableQueryResult(
            app_name=self.job_name,
            query_key=query_key,
            instance_list=tuple(i.to_wire(service_ips) for i in located),
        )


def unknown_job_result(query_key: str) -> TableQueryResult:
    """The answer for a service nobody knows: no app name, no instances."""
    return TableQueryResult(app_name=None, query_key=query_key, instance_list=())


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    return None


def _port(value: Any) -> int | None:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        return None
    return value
