"""The seed's running example end to end (seeds/003, reference §8.3), IPv4 and IPv6.

A local cluster per address family: X1 × 2 (w1, w2) with RR IP 10.30.0.1 /
fdff:2000::1, X3 × 1 on w2 with RR IP 10.30.1.30 / fdff:2000::30, deployed with
Oakestra's payloads. X1.0 on w1 calls http://<X3's RR IP>:30443/api/hello.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from testbed.cluster import TUNNEL_PORT, LocalCluster
from testbed.orchestrator import Instance, Orchestrator, Service, oakestra_cluster
from testbed.processes import Progress
from testbed.run import preflight
from testbed.status import metric, parse_metrics
from testbed.watch import TopicWatcher

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(preflight() is not None, reason=f"system test: {preflight()}"),
    pytest.mark.timeout(120),
]

X3 = "X.default.X3.default"


@dataclass
class Seed:
    family: str
    cluster: LocalCluster
    watcher: TopicWatcher
    x1: Service
    x3: Service

    def ip(self, v4: str, v6: str) -> str:
        return v6 if self.family == "IPv6" else v4

    @property
    def service_ip(self) -> str:
        return self.ip(self.x3.rr_ip, self.x3.rr_ip_v6)

    def instance_ip(self, instance: Instance) -> str:
        return self.ip(instance.instance_ip, instance.instance_ip_v6)

    def cluster_queries(self) -> float:
        text = self.cluster.cluster_api("GET", "/metrics").body
        return metric(parse_metrics(text), "oakestra_cluster_table_queries_total")


@pytest.fixture(scope="module", params=["IPv4", "IPv6"])
def seed(request, tmp_path_factory, dataplane_mode):
    run_dir = tmp_path_factory.mktemp(f"seed-{request.param}-{dataplane_mode}")
    options = {"run_dir": run_dir, "progress": Progress(sys.stderr)}
    with oakestra_cluster(dataplane_mode=dataplane_mode, **options) as (cluster, orch):
        with TopicWatcher(cluster, ["nodes/+/net/tablequery/#", "jobs/#"]) as watcher:
            yield deploy(request.param, cluster, orch, watcher)


def deploy(family: str, cluster: LocalCluster, orch: Orchestrator, watcher) -> Seed:
    w1, w2 = cluster.workers
    x1 = orch.deploy_service("X", "X1", rr_ip="10.30.0.1", rr_ip_v6="fdff:2000::1")
    x3 = orch.deploy_service("X", "X3", rr_ip="10.30.1.30", rr_ip_v6="fdff:2000::30")
    orch.deploy_instance(x1, w1)
    orch.deploy_instance(x1, w2)
    orch.deploy_instance(x3, w2)
    orch.settle()
    return Seed(family, cluster, watcher, x1, x3)


def test_first_request_resolves_through_the_cluster(seed: Seed) -> None:
    w1, w2 = seed.cluster.workers
    client, server = seed.x1.instances[0], seed.x3.instances[0]
    assert not [e for e in w1.status()["table"] if e["job_name"] == X3], "X3 known too early"
    queries_before = seed.cluster_queries()

    answer = client.container.http_get(seed.service_ip)

    assert answer["instance"] == f"{X3}.0"
    assert answer["path"] == "/api/hello"
    # the table miss on w1 went to the cluster as a table query by service IP ...
    request = seed.watcher.wait_for(
        lambda m: (
            m.topic == f"nodes/{w1.node_id}/net/tablequery/request"
            and m.payload.get("sip") == seed.service_ip
        ),
        5,
    )
    assert request.payload["sname"] == ""
    # ... answered with X3.0's location and the addresses the root gave it
    result = seed.watcher.wait_for(
        lambda m: (
            m.topic == f"nodes/{w1.node_id}/net/tablequery/result"
            and m.payload.get("query_key") == seed.service_ip
        ),
        5,
    )
    assert result.payload["app_name"] == X3
    [entry] = result.payload["instance_list"]
    assert entry["instance_number"] == 0
    assert entry["instance_ip"] == server.instance_ip
    assert entry["instance_ip_v6"] == server.instance_ip_v6
    assert entry["namespace_ip"] == server.namespace_ip
    assert (entry["host_ip"], entry["host_port"]) == (w2.address, TUNNEL_PORT)
    rr = {"IpType": "RR", "Address": "10.30.1.30", "Address_v6": "fdff:2000::30"}
    assert rr in entry["service_ip"]
    assert seed.cluster_queries() >= queries_before + 1
    # w1 now follows X3 (a remote job) and has its entry
    status = w1.status()
    assert X3 in status["interests"] and status["interests"][X3]["local"] == 0
    assert any(e["job_name"] == X3 for e in status["table"])


def test_server_sees_the_callers_instance_ip(seed: Seed) -> None:
    for client in seed.x1.instances.values():  # X1.0 across the tunnel, X1.1 beside X3
        answer = client.container.http_get(seed.service_ip)
        assert answer["instance"] == f"{X3}.0"
        assert answer["client"] == seed.instance_ip(client), client.name


def test_client_sees_replies_from_the_service_ip(seed: Seed) -> None:
    for client in seed.x1.instances.values():
        reply, source = client.container.udp(seed.service_ip)
        assert source == seed.service_ip, client.name
        assert reply["instance"] == f"{X3}.0"
        assert reply["client"] == seed.instance_ip(client)


def test_each_x1_instance_is_reachable_at_its_instance_ip(seed: Seed) -> None:
    server = seed.x3.instances[0]
    for target in seed.x1.instances.values():
        answer = server.container.http_get(seed.instance_ip(target))
        assert answer["instance"] == target.name
        assert answer["client"] == seed.instance_ip(server)
