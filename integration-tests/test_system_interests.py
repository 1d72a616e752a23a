"""Interests (seeds/003 "Interest Registration"), watched with a real MQTT subscriber.

One local cluster: X1.0 on w1 (the caller), X3.0 on w2. A second cluster is registered
at the root only (nothing answers at its address, 198.18.0.253): service X4 runs
"there", its location reported to the root as that cluster's service manager would.
So for X4 the chain goes all the way: nobody in our cluster runs it, and when w1 stops
using it the cluster has no reason left to keep the root interest.
"""

from __future__ import annotations

import socket
import sys
import time

import pytest

from testbed.cluster import TUNNEL_PORT
from testbed.orchestrator import APP_PORT, oakestra_cluster
from testbed.processes import Progress
from testbed.run import preflight
from testbed.status import metric, parse_metrics
from testbed.watch import TopicWatcher

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(preflight() is not None, reason=f"system test: {preflight()}"),
    pytest.mark.timeout(120),
]

OTHER_CLUSTER = "6630c0000000000000000002"
IDLE = 10.0  # the interest lifetime after the last packet (seeds/003)


class Scene:
    def __init__(self, cluster, orch, watcher) -> None:
        self.cluster, self.orch, self.watcher = cluster, orch, watcher
        self.w1, self.w2 = cluster.workers
        self.x1 = orch.deploy_service("X", "X1")
        self.x3 = orch.deploy_service("X", "X3", rr_ip="10.30.1.30")
        self.x4 = orch.deploy_service("X", "X4", rr_ip="10.30.4.4")
        self.client = orch.deploy_instance(self.x1, self.w1)
        orch.deploy_instance(self.x3, self.w2)
        self.root_api("POST", "/api/net/cluster", {
            "cluster_id": OTHER_CLUSTER, "cluster_address": "198.18.0.253", "cluster_port": 10110,
        })  # fmt: skip
        self.remote_instance(0)
        self.deployed_at = time.monotonic()

    def root_api(self, method: str, path: str, body=None):
        reply = self.cluster.root_api(method, path, body)
        assert reply.status == 200, (path, reply)
        return reply.body

    def remote_instance(self, number: int) -> None:
        """An X4 instance in the other cluster, located on a node at 198.18.0.3."""
        body = {"_id": self.x4.job_id, "instance_number": number, "cluster_id": OTHER_CLUSTER}
        self.root_api("POST", "/api/net/instance/deploy", body)
        location = {
            "instance_number": number,
            "namespace_ip": f"10.17.0.{2 + number}",
            "namespace_ip_v6": f"fc00::1:{2 + number}",
            "host_ip": "198.18.0.3",
            "host_port": TUNNEL_PORT,
        }
        body = {"job_id": self.x4.job_id, "instances": [location]}
        self.root_api("POST", "/api/net/service/net_deploy_status", body)

    def use_x3(self) -> float:
        """One request/reply with X3; the time of its last packet."""
        reply, _source = self.client.container.udp(self.x3.rr_ip)
        assert reply["instance"] == f"{self.x3.job_name}.0"
        return time.monotonic()

    def use_x4(self) -> float:
        """One datagram to X4 (nobody answers there); the time it was sent."""
        sock = self.client.container.sockets.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.sendto(b"hello", (self.x4.rr_ip, APP_PORT))
            return time.monotonic()

    def root_interest_removals(self) -> float:
        samples = parse_metrics(self.root_api("GET", "/metrics"))
        return metric(
            samples, "oakestra_http_requests_total", endpoint="net.remove_interest", status="200"
        )

    def removal(self, node_id: str, job_name: str, timeout: float):
        topic = f"nodes/{node_id}/net/interest/remove"
        return self.watcher.wait_for(
            lambda m: m.topic == topic and m.payload.get("appname") == job_name, timeout
        )

    def updates(self, job_name: str) -> list:
        topic = f"jobs/{job_name}/updates_available"
        return self.watcher.select(lambda m: m.topic == topic)

    def entries(self, worker, job_name: str) -> list[dict]:
        return [e for e in worker.status()["table"] if e["job_name"] == job_name]


@pytest.fixture(scope="module")
def scene(tmp_path_factory, dataplane_mode):
    run_dir = tmp_path_factory.mktemp("interests")
    options = {"run_dir": run_dir, "progress": Progress(sys.stderr)}
    with oakestra_cluster(dataplane_mode=dataplane_mode, **options) as (cluster, orch):
        with TopicWatcher(cluster, ["jobs/#", "nodes/+/net/interest/#"]) as watcher:
            yield Scene(cluster, orch, watcher)


def test_idle_remote_interest_expires_10_s_after_the_last_packet(scene: Scene) -> None:
    w1, x3, x4 = scene.w1, scene.x3.job_name, scene.x4.job_name
    scene.use_x3()
    scene.use_x4()
    w1.process.wait_until(lambda: x4 in w1.status()["interests"], 5, "w1 follows X4")
    # w1 follows X4's updates (one wildcard subscription, live since registration) in the
    # same step that puts the table result in its table: once X4.0 is there, it follows
    w1.process.wait_until(lambda: len(scene.entries(w1, x4)) == 1, 5, "w1 has X4.0")
    # while w1 is interested, a change of X4 at the root reaches w1 through the cluster
    scene.remote_instance(1)
    scene.watcher.wait_for(lambda m: m.topic == f"jobs/{x4}/updates_available", 5)
    w1.process.wait_until(lambda: len(scene.entries(w1, x4)) == 2, 5, "w1 has X4.1")
    removals_before = scene.root_interest_removals()

    last_x3, last_x4 = scene.use_x3(), scene.use_x4()

    for job_name, last in ((x3, last_x3), (x4, last_x4)):
        message = scene.removal(w1.node_id, job_name, IDLE + 6)
        print(f"{job_name}: interest/remove {message.seen - last:.2f} s after the last packet")
        assert IDLE - 2 <= message.seen - last <= IDLE + 2, (job_name, message.seen - last)
        assert not scene.entries(w1, job_name)
        assert job_name not in w1.status()["interests"]
    # nobody here runs X4 or wants it: the cluster drops its root interest (X3 runs on w2:
    # that one stays)
    w1.process.wait_until(
        lambda: scene.root_interest_removals() == removals_before + 1, 3, "root interest dropped"
    )
    time.sleep(1)  # a quiet period, not an event: no second removal follows
    assert scene.root_interest_removals() == removals_before + 1
    # so the root no longer tells this cluster about X4's changes
    seen = len(scene.updates(x4))
    scene.remote_instance(2)
    time.sleep(3)  # a quiet period, not an event: no update for X4 arrives
    assert len(scene.updates(x4)) == seen


def test_a_node_never_drops_interest_in_its_own_services(scene: Scene) -> None:
    time.sleep(max(0.0, scene.deployed_at + IDLE + 3 - time.monotonic()))
    own = [(scene.w1, scene.x1.job_name), (scene.w2, scene.x3.job_name)]
    for worker, job_name in own:
        dropped = scene.watcher.select(
            lambda m, w=worker, j=job_name: (
                m.topic == f"nodes/{w.node_id}/net/interest/remove"
                and m.payload.get("appname") == j
            )
        )
        assert not dropped, (worker.name, job_name)
        interest = worker.status()["interests"][job_name]
        assert interest["local"] == 1 and interest["idle_seconds"] > IDLE
        assert scene.entries(worker, job_name)
