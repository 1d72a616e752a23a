"""Faults while traffic flows: broker restart, cluster service manager restart, net manager
restart (graceful and crash) with live containers. One local cluster, tests in order.

X1.0 on w1 keeps one UDP flow to X3's RR IP busy (a request every 50 ms over the same
socket, so the same 5-tuple) for the whole module: "existing flows keep working" is
read off that flow's record.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest

from testbed.orchestrator import APP_PORT, Orchestrator
from testbed.run import preflight
from testbed.status import metric, parse_metrics

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(preflight() is not None, reason=f"system test: {preflight()}"),
    pytest.mark.timeout(120),
]

RECOVERY = 15.0  # seconds a component gets to be back


@dataclass
class Exchange:
    at: float
    instance: str | None  # None: no answer within the timeout
    client: str | None = None


@dataclass
class Flow:
    """One UDP socket in a container, one request every `interval` s, answers recorded."""

    sock: socket.socket
    target: str
    interval: float = 0.05
    log: list[Exchange] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Flow:
        self.sock.settimeout(0.3)
        threading.Thread(target=self._run, name="flow", daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                self.sock.sendto(b"ping", (self.target, APP_PORT))
                answer = json.loads(self.sock.recv(4096))
                self.log.append(Exchange(at, answer["instance"], answer["client"]))
            except (OSError, ValueError):
                self.log.append(Exchange(at, None))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - at)))

    def stop(self) -> None:
        self._stop.set()
        time.sleep(0.4)
        self.sock.close()

    def window(self, start: float, end: float) -> list[Exchange]:
        return [e for e in list(self.log) if start <= e.at <= end]

    def lost(self, start: float, end: float) -> int:
        return sum(1 for e in self.window(start, end) if e.instance is None)

    def answered_since(self, start: float) -> list[Exchange]:
        return [e for e in list(self.log) if e.at >= start and e.instance is not None]


class Scene:
    def __init__(self, cluster, orch: Orchestrator) -> None:
        self.cluster, self.orch = cluster, orch
        self.w1, self.w2 = cluster.workers
        self.x1 = orch.deploy_service("X", "X1")
        self.x3 = orch.deploy_service("X", "X3", rr_ip="10.30.1.30")
        self.client = orch.deploy_instance(self.x1, self.w1)
        orch.deploy_instance(self.x3, self.w2)
        orch.settle()
        sock = self.client.container.sockets.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.flow = Flow(sock, self.x3.rr_ip).start()
        wait(lambda: len(self.flow.answered_since(0)) >= 5, 5, "the flow runs")

    def reaches(self, service_ip: str, instance_name: str, timeout: float = 3.0) -> float:
        """Seconds until a new connection from X1.0 to service_ip lands on instance_name."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.client.container.http_get(service_ip)["instance"] == instance_name:
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"no new connection to {service_ip} reached {instance_name}")

    def root_metric(self, **labels: str) -> float:
        samples = parse_metrics(self.cluster.root_api("GET", "/metrics").body)
        return metric(samples, "oakestra_http_requests_total", **labels)

    def cluster_metric(self, name: str, **labels: str) -> float:
        return metric(
            parse_metrics(self.cluster.cluster_api("GET", "/metrics").body), name, **labels
        )

    def all_connected(self) -> bool:
        nodes = all(w.status()["broker_connected"] for w in self.cluster.workers)
        return nodes and self.cluster.cluster_api("GET", "/healthz").status == 200


def wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (OSError, AssertionError, RuntimeError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def scene(local_cluster):
    built = Scene(*local_cluster)
    yield built
    built.flow.stop()


def test_broker_restart_keeps_flows_and_resolves_new_service_ips_after(scene: Scene) -> None:
    started = time.monotonic()
    scene.cluster.restart_broker()
    wait(scene.all_connected, RECOVERY, "nodes and cluster back on the broker")
    back = time.monotonic()
    print(f"broker restart: everyone reconnected after {back - started:.1f} s")
    time.sleep(0.5)
    assert scene.flow.lost(started, time.monotonic()) == 0
    assert len(scene.flow.window(started, time.monotonic())) > 10
    # a service deployed after the restart: its report and w1's first query go over MQTT
    x4 = scene.orch.deploy_service("X", "X4", rr_ip="10.30.4.4")
    scene.orch.deploy_instance(x4, scene.w2)
    assert scene.client.container.http_get(x4.rr_ip)["instance"] == f"{x4.job_name}.0"
    # w1 follows X3 (the flow uses it) and hears about its scale-up again
    new = scene.orch.deploy_instance(scene.x3, scene.w2)
    took = scene.reaches(scene.x3.rr_ip, new.name)
    print(f"after the broker restart, new flows reached {new.name} {took:.2f} s after deploy")


def test_cluster_manager_restart_resolves_through_the_root(scene: Scene) -> None:
    x5 = scene.orch.deploy_service("X", "X5", rr_ip="10.30.5.5")
    scene.orch.deploy_instance(x5, scene.w2)  # cached by the cluster, then forgotten
    by_ip = scene.root_metric(endpoint="net.table_query_by_ip")
    by_name = scene.root_metric(endpoint="net.table_query_by_name")
    started = time.monotonic()
    scene.cluster.restart_cluster_manager()
    assert scene.flow.lost(started, time.monotonic()) == 0

    answer = scene.client.container.http_get(x5.rr_ip)  # node -> cluster (empty) -> root

    assert answer["instance"] == f"{x5.job_name}.0"
    assert answer["client"] == scene.client.instance_ip
    # the emptied cluster got X5 from the root: asked by IP for the node's query, or
    # fetched by name first (a restarted cluster refills the jobs the root says it follows)
    asked_by_ip = scene.root_metric(endpoint="net.table_query_by_ip") - by_ip
    fetched_by_name = scene.root_metric(endpoint="net.table_query_by_name") - by_name
    assert asked_by_ip <= 1 and asked_by_ip + fetched_by_name >= 1, (asked_by_ip, fetched_by_name)
    # changes still reach the nodes: the root still counts this cluster as interested
    new = scene.orch.deploy_instance(scene.x3, scene.w2)
    took = scene.reaches(scene.x3.rr_ip, new.name)
    print(f"after the cluster restart, new flows reached {new.name} {took:.2f} s after deploy")


def addresses_in(netns: str) -> set[str]:
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "addr", "show", "dev", "eth0"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {a["local"] for link in json.loads(out) for a in link["addr_info"]}


def programs_in(netns: str) -> list[str]:
    """The command lines of the processes in a namespace."""
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    lines = []
    for pid in pids.split():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                lines.append(cmdline.read().replace(b"\0", b" ").decode().strip())
        except OSError:
            pass  # gone meanwhile
    return lines


def one_daemon_one_dataplane(netns: str) -> bool:
    programs = programs_in(netns)
    daemons = sum("net-manager" in p and " run" in p for p in programs)
    return daemons == 1 and sum("net_manager.dataplane" in p for p in programs) == 1


@pytest.mark.parametrize(("worker_name", "crash"), [("w2", False), ("w1", True)])
def test_net_manager_restart_keeps_containers_and_flows(scene: Scene, worker_name, crash) -> None:
    worker = scene.cluster.worker(worker_name)
    before = {i["instance"]: (i["namespace_ip"], i["namespace_ip_v6"])
              for i in worker.status()["instances"]}  # fmt: skip
    containers = [
        i.container for s in scene.orch.services.values()
        for i in s.instances.values() if i.worker is worker
    ]  # fmt: skip
    inside = {c.name: addresses_in(c.netns) for c in containers}
    started = time.monotonic()

    scene.cluster.restart_net_manager(worker, crash=crash)

    back = time.monotonic()
    after = {i["instance"]: (i["namespace_ip"], i["namespace_ip_v6"])
             for i in worker.status()["instances"]}  # fmt: skip
    assert after == before  # re-adopted, not re-addressed
    assert {c.name: addresses_in(c.netns) for c in containers} == inside
    resumed = wait(lambda: scene.flow.answered_since(back), 10, "the flow answers again")
    print(
        f"{worker_name} {'crash' if crash else 'restart'}: back after {back - started:.1f} s, "
        f"flow answered {resumed[0].at - back:.2f} s later, "
        f"{scene.flow.lost(started, resumed[0].at)} requests lost meanwhile"
    )
    assert resumed[0].client == scene.client.instance_ip
    # one net manager and one data plane: none left over from before (children it forks
    # for a moment, e.g. ldconfig, come and go)
    wait(lambda: one_daemon_one_dataplane(worker.netns), 5, f"one daemon in {worker.netns}")
    for instance in scene.x3.instances.values():
        scene.reaches(scene.x3.rr_ip, instance.name)
