"""A mixed local cluster: our managers, our net manager on w1, the raw-tunnel peer on w2.

    with mixed_cluster(run_dir=...) as (cluster, orchestrator, peer):
        ...

The last worker namespace of a LocalCluster gets no net manager: the raw peer
(rawpeer.py) runs there instead, as an upstream node would, started once the cluster
is registered at the root. `PeerHandle.deploy_instance` plays Oakestra for it (the
root and the cluster learn of the instance as from Oakestra's managers, then the node
engine's deploy goes to the peer's control socket); a container of the peer is a
namespace of its own whose sockets the test opens (`NetnsSockets`). The broker is the
one upstream nodes can log in to: anonymous, Oakestra's default.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from net_manager.cli import call
from testbed.cluster import BROKER_PORT, CLUSTER_ID, TUNNEL_PORT, LocalCluster, Worker
from testbed.nsnet import NetnsSockets
from testbed.orchestrator import Orchestrator, OrchestratorError, Service
from testbed.processes import Process, child_env

INTEGRATION_TESTS = Path(__file__).resolve().parents[1]
START_TIMEOUT = 20.0


@dataclass
class PeerInstance:
    """An instance on the peer: a namespace of its own behind the peer's bridge."""

    service: Service
    number: int
    instance_ip: str
    instance_ip_v6: str
    netns: str
    sockets: NetnsSockets  # the test opens the container's sockets through it
    namespace_ip: str = ""
    namespace_ip_v6: str = ""

    @property
    def name(self) -> str:
        return f"{self.service.job_name}.{self.number}"


class PeerHandle:
    """The raw peer process, its control socket, and its instances."""

    def __init__(self, cluster: LocalCluster, place: Worker, interest_seconds: float) -> None:
        self.cluster = cluster
        self.name = place.name
        self.netns = place.netns
        self.address = place.address
        self.node_id = place.node_id
        self.control = str(cluster.run_dir / "rawpeer.sock")
        argv = [sys.executable, "-m", "testbed.rawpeer", "--node-id", self.node_id,
                "--broker", f"{cluster.infra_ip}:{BROKER_PORT}", "--address", self.address,
                "--port", str(TUNNEL_PORT), "--control", self.control,
                "--interest-seconds", str(interest_seconds)]  # fmt: skip
        env = child_env({"PYTHONPATH": str(INTEGRATION_TESTS)})
        self.process = Process("rawpeer", self.netns, argv, cluster.run_dir / "rawpeer.log", env)
        self.instances: list[PeerInstance] = []

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        return call(self.control, method, path, body)

    def status(self) -> dict:
        code, body = self.call("GET", "/status")
        if code != 200:
            raise RuntimeError(f"raw peer: GET /status answered {code}: {body}")
        return body

    def counter(self, name: str) -> int:
        return int(self.status()["counters"].get(name, 0))

    def query(self, sname: str = "", sip: str = "") -> dict:
        code, body = self.call("POST", "/tablequery", {"sname": sname, "sip": sip})
        if code != 200:
            raise RuntimeError(f"raw peer: table query {sname or sip} answered {code}: {body}")
        return body

    def deploy_instance(self, service: Service) -> PeerInstance:
        """Oakestra schedules the next instance of `service` here (root, then cluster),
        and the node engine attaches its container at the peer."""
        number = service.next_number
        service.next_number += 1
        body = {"instance_number": number, "cluster_id": CLUSTER_ID, "_id": service.job_id}
        reply = self.cluster.root_api("POST", "/api/net/instance/deploy", body)
        if reply.status != 200:
            raise OrchestratorError(f"instance deploy {service.job_name}.{number}: {reply}")
        ips = reply.body["instance"]
        body = {"job_name": service.job_name}
        reply = self.cluster.cluster_api("POST", "/api/net/deployment", body)
        if reply.status != 200:
            raise OrchestratorError(f"cluster deployment {service.job_name}: {reply}")
        netns = self.cluster.bed.add_namespace(f"pc{len(self.instances)}")
        instance = PeerInstance(
            service, number, ips["instance_ip"], ips["instance_ip_v6"], netns,
            NetnsSockets(f"/run/netns/{netns}"),
        )  # fmt: skip
        self.instances.append(instance)
        request = {"netns": netns, "serviceName": service.job_name, "instanceNumber": number}
        code, attached = self.call("POST", "/container/deploy", request)
        if code != 200:
            raise OrchestratorError(f"raw peer deploy {instance.name}: {attached}")
        instance.namespace_ip = attached["nsAddress"]
        instance.namespace_ip_v6 = attached["nsAddressv6"]
        return instance

    def close(self) -> None:
        for instance in self.instances:
            instance.sockets.close()


class MixedCluster(LocalCluster):
    """A LocalCluster whose last worker namespace hosts the raw peer (see the module doc)."""

    def __init__(self, *, interest_seconds: float = 10.0, **options: Any) -> None:
        # upstream nodes log in anonymously (or with client certificates, which the peer does not)
        super().__init__(workers=2, open_broker=True, **options)
        self.peer = PeerHandle(self, self.workers.pop(), interest_seconds)  # no net manager

    def start_peer(self) -> None:
        """After the cluster is registered at the root: the peer asks for its subnet."""
        with self.progress.step(f"starting the raw peer on {self.peer.name}"):
            self._launch(self.peer.process)
            self.peer.process.wait_until(self.peer.status, START_TIMEOUT, "ready")

    def close(self) -> None:
        self.peer.close()
        super().close()


@contextmanager
def mixed_cluster(
    **options: Any,
) -> Iterator[tuple[MixedCluster, Orchestrator, PeerHandle]]:
    """Started and registered: the cluster at the root, w1 and the peer at the cluster."""
    cluster = MixedCluster(**options)
    orchestrator = Orchestrator(cluster)
    try:
        cluster.start()
        orchestrator.bootstrap()
        cluster.start_peer()
        yield cluster, orchestrator, cluster.peer
    finally:
        orchestrator.close()
        cluster.close()
