"""Oakestra's part, played against a LocalCluster with Oakestra's own payloads.

The calls and their order are those of Oakestra's components (reference §1 "External
callers", §2.1, §8.3):
- the root system manager: `POST /api/net/cluster` when the cluster registers,
  `POST /api/net/service/deploy {_id, deployment_descriptor}` with the descriptor its
  `generate_db_structure` builds (incl. `RR_ip`/`RR_ip_v6` from `addresses`), `POST
  /api/net/instance/deploy {_id, instance_number, cluster_id}` when an instance is
  scheduled, `DELETE /api/net/<id>/<n>` and `DELETE /api/net/service/<id>`;
- the cluster manager: `POST /api/net/deployment {job_name}` before the node deploys,
  with the instance and the node it was scheduled on (`instance_number`, `worker_id`:
  the cluster then accepts reports on the instance only from that node);
every call with the run's bearer token, as the system and cluster managers would send it;
- the node engine: `/register {client_id, cluster_address}`, then per instance a
  container (a process in a namespace of its own running echo_server.py) attached with
  `/container/deploy {pid, serviceName, instanceNumber, portMappings}` and detached
  with `/container/undeploy`.
A `Container` can also be a client: requests made from inside its namespace.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bson import ObjectId

from testbed.cluster import CLUSTER_ID, CLUSTER_PORT, LocalCluster, Worker
from testbed.nsnet import NetnsSockets, Reply, http_call, udp_exchange
from testbed.processes import Process, Progress

ECHO_SERVER = Path(__file__).resolve().parent / "echo_server.py"
APP_PORT = 30443  # what the containers listen on (HTTP and UDP), as in the seed's example
READY_TIMEOUT = 15.0


class OrchestratorError(RuntimeError):
    """A call of Oakestra's that failed; the message names the call and the answer."""


def _ok(reply: Reply, what: str) -> Any:
    if reply.status != 200:
        raise OrchestratorError(f"{what}: HTTP {reply.status}: {reply.body}")
    return reply.body


@dataclass
class Container:
    """A process in a namespace of its own, serving echo_server.py on APP_PORT."""

    name: str  # e.g. X.default.X1.default.0
    netns: str
    process: Process
    _sockets: NetnsSockets | None = None

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def sockets(self) -> NetnsSockets:
        if self._sockets is None:
            self._sockets = NetnsSockets(f"/run/netns/{self.netns}")
        return self._sockets

    def http_get(
        self, host: str, path: str = "/api/hello", port: int = APP_PORT, timeout: float = 5.0
    ) -> dict:
        """GET http://host:port/path from inside this container; the server's JSON answer."""
        where = f"[{host}]" if ":" in host else host
        reply = http_call(self.sockets, "GET", f"http://{where}:{port}{path}", timeout=timeout)
        if reply.status != 200 or not isinstance(reply.body, dict):
            raise OrchestratorError(f"GET {host}:{port}{path} from {self.name}: {reply}")
        return reply.body

    def udp(self, host: str, port: int = APP_PORT, timeout: float = 5.0) -> tuple[dict, str]:
        """One UDP exchange from inside this container: (answer, address it came from)."""
        data, source = udp_exchange(self.sockets, host, port, b"hello", timeout)
        return json.loads(data), source

    def close(self) -> None:
        if self._sockets is not None:
            self._sockets.close()
            self._sockets = None


@dataclass
class Instance:
    service: Service
    number: int
    worker: Worker
    instance_ip: str
    instance_ip_v6: str
    container: Container
    namespace_ip: str = ""
    namespace_ip_v6: str = ""

    @property
    def name(self) -> str:
        return f"{self.service.job_name}.{self.number}"


@dataclass
class Service:
    app: str
    name: str
    job_id: str
    job_name: str
    service_ips: dict[str, tuple[str, str]]  # "RR" / "Closest" -> (IPv4, IPv6)
    instances: dict[int, Instance] = field(default_factory=dict)
    next_number: int = 0

    @property
    def rr_ip(self) -> str:
        return self.service_ips["RR"][0]

    @property
    def rr_ip_v6(self) -> str:
        return self.service_ips["RR"][1]

    @property
    def closest_ip(self) -> str:
        return self.service_ips["Closest"][0]

    @property
    def closest_ip_v6(self) -> str:
        return self.service_ips["Closest"][1]


def deployment_descriptor(
    app: str, name: str, job_id: str, app_id: str, addresses: dict | None
) -> dict:
    """What Oakestra's system manager sends: the SLA microservice after
    `generate_db_structure` (services/service_management.py) and `insert_job`."""
    descriptor: dict[str, Any] = {
        "microserviceID": job_id,
        "microservice_name": name,
        "microservice_namespace": "default",
        "virtualization": "docker",
        "cmd": [],
        "memory": 100,
        "vcpus": 1,
        "storage": 0,
        "code": f"docker.io/{app.lower()}/{name.lower()}",
        "port": str(APP_PORT),
        "applicationID": app_id,
        "app_name": app,
        "app_ns": "default",
        "service_name": name,
        "service_ns": "default",
        "image": f"docker.io/{app.lower()}/{name.lower()}",
        "next_instance_progressive_number": 0,
        "instance_list": [],
        "job_name": f"{app}.default.{name}.default",
    }
    if addresses is not None:
        descriptor["addresses"] = addresses
        descriptor["RR_ip"] = addresses.get("rr_ip")
        descriptor["RR_ip_v6"] = addresses.get("rr_ip_v6")
    return descriptor


class Orchestrator:
    def __init__(self, cluster: LocalCluster, progress: Progress | None = None) -> None:
        self.cluster = cluster
        self.progress = progress or cluster.progress
        self.app_ids: dict[str, str] = {}
        self.services: dict[str, Service] = {}

    # -------------------------------------------------------------- registration

    def register_cluster(self) -> None:
        """The system manager, when the cluster registers (gRPC peer address, SM port)."""
        with self.progress.step(f"registering cluster {CLUSTER_ID} at the root"):
            body = {
                "cluster_id": CLUSTER_ID,
                "cluster_address": self.cluster.infra_ip,
                "cluster_port": str(CLUSTER_PORT),
            }
            _ok(self.cluster.root_api("POST", "/api/net/cluster", body), "POST /api/net/cluster")

    def register_nodes(self) -> None:
        """The node engine of each worker: /register, then the data plane is up."""
        for worker in self.cluster.workers:
            with self.progress.step(f"registering node {worker.name} ({worker.node_id})"):
                body = {"client_id": worker.node_id, "cluster_address": self.cluster.infra_ip}
                code, answer = worker.call("POST", "/register", body)
                if code != 200:
                    raise OrchestratorError(f"/register on {worker.name}: {code} {answer}")
                worker.process.wait_until(
                    lambda w=worker: w.status()["counters"]["dataplane"].get("running"),
                    READY_TIMEOUT,
                    "data plane running",
                )

    def bootstrap(self) -> None:
        self.register_cluster()
        self.register_nodes()

    # -------------------------------------------------------------- services

    def deploy_service(
        self, app: str, name: str, *, rr_ip: str | None = None, rr_ip_v6: str | None = None
    ) -> Service:
        job_id = str(ObjectId())
        app_id = self.app_ids.setdefault(app, str(ObjectId()))
        addresses = None
        if rr_ip or rr_ip_v6:
            addresses = {k: v for k, v in (("rr_ip", rr_ip), ("rr_ip_v6", rr_ip_v6)) if v}
        descriptor = deployment_descriptor(app, name, job_id, app_id, addresses)
        job_name = descriptor["job_name"]
        label = f"deploying service {job_name}" + (f" (RR IP {rr_ip})" if rr_ip else "")
        with self.progress.step(label):
            body = {"deployment_descriptor": descriptor, "_id": job_id}
            answer = _ok(
                self.cluster.root_api("POST", "/api/net/service/deploy", body),
                f"POST /api/net/service/deploy {job_name}",
            )
        ips = {e["IpType"]: (e["Address"], e["Address_v6"]) for e in answer["service_ip_list"]}
        service = Service(app, name, job_id, job_name, ips)
        self.services[job_name] = service
        return service

    def deploy_instance(self, service: Service, worker: Worker) -> Instance:
        """Schedule the next instance of `service` on `worker` and attach its container."""
        with self.progress.step(f"deploying {service.job_name}.{service.next_number} on "
                                f"{worker.name}"):  # fmt: skip
            instance = self.schedule_instance(service, worker)
            self.attach(instance)
        return instance

    def schedule_instance(self, service: Service, worker: Worker) -> Instance:
        """Everything before the node engine's /container/deploy: the root learns of the
        instance, the cluster manager tells the cluster, the container starts."""
        number = service.next_number
        service.next_number += 1
        body = {"instance_number": number, "cluster_id": CLUSTER_ID, "_id": service.job_id}
        answer = _ok(
            self.cluster.root_api("POST", "/api/net/instance/deploy", body),
            f"POST /api/net/instance/deploy {service.job_name}.{number}",
        )["instance"]
        placement = {
            "job_name": service.job_name,
            "instance_number": number,
            "worker_id": worker.node_id,
        }
        _ok(
            self.cluster.cluster_api("POST", "/api/net/deployment", placement),
            f"POST cluster /api/net/deployment {service.job_name}",
        )
        container = self.start_container(f"{service.job_name}.{number}", worker)
        instance = Instance(
            service, number, worker, answer["instance_ip"], answer["instance_ip_v6"], container
        )
        service.instances[number] = instance
        return instance

    def start_container(self, name: str, worker: Worker) -> Container:
        short = f"{name.split('.')[2].lower()}-{name.rsplit('.', 1)[1]}"
        netns = self.cluster.bed.add_namespace(short)
        argv = [sys.executable, str(ECHO_SERVER), name, str(APP_PORT)]
        process = self.cluster.spawn(f"container-{short}", netns, argv)
        process.wait_until(lambda: "ready:" in process.log_tail(3), READY_TIMEOUT, "listening")
        return Container(name, netns, process)

    def attach(self, instance: Instance) -> dict:
        """The node engine's /container/deploy; waits until the node knows the instance IP."""
        worker, service = instance.worker, instance.service
        body = {
            "pid": instance.container.pid,
            "serviceName": service.job_name,
            "instanceNumber": instance.number,
            "portMappings": "",
        }
        code, answer = worker.call("POST", "/container/deploy", body)
        if code != 200:
            raise OrchestratorError(f"/container/deploy {instance.name} on {worker.name}: {answer}")
        instance.namespace_ip, instance.namespace_ip_v6 = answer["nsAddress"], answer["nsAddressv6"]
        worker.process.wait_until(
            lambda: self.node_knows(worker, instance), READY_TIMEOUT, f"{instance.name} in table"
        )
        return answer

    @staticmethod
    def node_knows(worker: Worker, instance: Instance) -> bool:
        return any(
            e.get("job_name") == instance.service.job_name
            and e.get("instance_number") == instance.number
            and e.get("namespace_ip") == instance.namespace_ip
            for e in worker.status()["table"]
        )

    def undeploy_instance(self, instance: Instance) -> None:
        """Node engine detaches and stops the container; the system manager tells the root."""
        service, worker = instance.service, instance.worker
        with self.progress.step(f"undeploying {instance.name} from {worker.name}"):
            body = {
                "serviceName": service.job_name,
                "instanceNumber": instance.number,
                "pid": -1,
                "portMappings": "",
            }
            code, answer = worker.call("POST", "/container/undeploy", body)
            if code != 200:
                raise OrchestratorError(f"/container/undeploy {instance.name}: {code} {answer}")
            self.stop_container(instance.container)
            path = f"/api/net/{service.job_id}/{instance.number}"
            _ok(self.cluster.root_api("DELETE", path), f"DELETE {path}")
            del service.instances[instance.number]

    def stop_container(self, container: Container) -> None:
        container.close()
        self.cluster.forget(container.process)
        self.cluster.bed.remove_namespace(container.netns)

    def remove_service(self, service: Service) -> None:
        """Scale to zero, then delete the service (system manager's delete_service)."""
        for instance in list(service.instances.values()):
            self.undeploy_instance(instance)
        with self.progress.step(f"removing service {service.job_name}"):
            path = f"/api/net/service/{service.job_id}"
            _ok(self.cluster.root_api("DELETE", path), f"DELETE {path}")
        del self.services[service.job_name]

    def close(self) -> None:
        for service in self.services.values():
            for instance in service.instances.values():
                instance.container.close()

    # -------------------------------------------------------------- looking around

    def settle(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every node that follows a service has every instance of it in its table
        (a new instance reaches the other nodes a moment after its own node)."""
        for service in self.services.values():
            for instance in service.instances.values():
                self.wait_all_know(instance, timeout)

    def wait_all_know(self, instance: Instance, timeout: float = READY_TIMEOUT) -> None:
        """Until every worker interested in the instance's job has it in its table."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            waiting = [
                w
                for w in self.cluster.workers
                if instance.service.job_name in w.status()["interests"]
                and not self.node_knows(w, instance)
            ]
            if not waiting:
                return
            time.sleep(0.05)
        raise OrchestratorError(f"{instance.name} not in the tables of {waiting}")


@contextmanager
def oakestra_cluster(**cluster_options: Any) -> Iterator[tuple[LocalCluster, Orchestrator]]:
    """A started LocalCluster with the cluster and its nodes registered; all removed after."""
    cluster = LocalCluster(**cluster_options)
    orchestrator = Orchestrator(cluster)
    try:
        cluster.start()
        orchestrator.bootstrap()
        yield cluster, orchestrator
    finally:
        orchestrator.close()
        cluster.close()
