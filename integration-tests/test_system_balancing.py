"""Balancing and scaling through service IPs, in one local cluster (tests run in order).

X1.0 on w1 and X1.1 on w2 are the callers; X2 has X2.0 on w1 and X2.1 on w2. Every
HTTP request is a new TCP connection (new flow), every UDP exchange a new socket.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter

import pytest

from testbed.orchestrator import Orchestrator, Service
from testbed.run import preflight
from testbed.status import metric, parse_metrics

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(preflight() is not None, reason=f"system test: {preflight()}"),
    pytest.mark.timeout(120),
]

FAMILIES = ["IPv4", "IPv6"]


@pytest.fixture(scope="module")
def app(local_cluster):
    cluster, orch = local_cluster
    w1, w2 = cluster.workers
    x1 = orch.deploy_service("X", "X1")
    x2 = orch.deploy_service("X", "X2")
    for service, worker in ((x1, w1), (x1, w2), (x2, w1), (x2, w2)):
        orch.deploy_instance(service, worker)
    orch.settle()
    return cluster, orch, x1, x2


def pick(family: str, v4: str, v6: str) -> str:
    return v6 if family == "IPv6" else v4


def spread(client, service_ip: str, count: int, *, udp: bool = False) -> Counter:
    if udp:
        return Counter(client.container.udp(service_ip)[0]["instance"] for _ in range(count))
    return Counter(client.container.http_get(service_ip)["instance"] for _ in range(count))


@pytest.mark.parametrize(("family", "udp"), [("IPv4", False), ("IPv6", False), ("IPv4", True)])
def test_round_robin_splits_new_connections_evenly(app, family, udp) -> None:
    _cluster, _orch, x1, x2 = app
    counts = spread(x1.instances[0], pick(family, x2.rr_ip, x2.rr_ip_v6), 20, udp=udp)
    assert set(counts) == {i.name for i in x2.instances.values()}
    assert all(9 <= n <= 11 for n in counts.values()), counts


@pytest.mark.parametrize("family", FAMILIES)
def test_closest_prefers_the_instance_on_the_callers_node(app, family) -> None:
    _cluster, _orch, x1, x2 = app
    for client, local in ((x1.instances[0], x2.instances[0]), (x1.instances[1], x2.instances[1])):
        assert client.worker is local.worker
        counts = spread(client, pick(family, x2.closest_ip, x2.closest_ip_v6), 10)
        assert counts == {local.name: 10}, (client.name, counts)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_instance_ip_reaches_exactly_its_instance(app, family) -> None:
    _cluster, _orch, x1, x2 = app
    for client in x1.instances.values():
        for target in x2.instances.values():
            counts = spread(client, pick(family, target.instance_ip, target.instance_ip_v6), 4)
            assert counts == {target.name: 4}, (client.name, target.name, counts)


def test_scale_up_new_instance_gets_new_flows_within_2_s(app) -> None:
    _cluster, orch, x1, x2 = app
    w1 = x2.instances[0].worker
    new = orch.schedule_instance(x2, w1)  # root, cluster manager, container started
    started = time.monotonic()
    orch.attach(new)  # the node engine's /container/deploy: the deployment report
    reached = {}
    while len(reached) < 2 and time.monotonic() - started < 5:
        for client in x1.instances.values():  # X1.0 beside it, X1.1 across the tunnel
            if client.name in reached:
                continue
            if client.container.http_get(x2.rr_ip)["instance"] == new.name:
                reached[client.name] = time.monotonic() - started
    print(f"{new.name} reached, seconds after its deployment call: {reached}")
    assert set(reached) == {i.name for i in x1.instances.values()}, reached
    assert max(reached.values()) <= 2.0, reached
    counts = spread(x1.instances[1], x2.rr_ip, 30)
    assert counts[new.name] == 10, counts  # and it takes its full share


def test_scale_down_removed_instance_gets_no_flows_and_its_flows_go(app) -> None:
    cluster, orch, x1, x2 = app
    client = x1.instances[1]
    doomed = x2.instances.get(2) or orch.deploy_instance(x2, x2.instances[0].worker)
    sticky = flow_to(client, x2.rr_ip, doomed.name)
    orch.undeploy_instance(doomed)
    started = time.monotonic()
    for worker in cluster.workers:
        worker.process.wait_until(
            lambda w=worker: not Orchestrator.node_knows(w, doomed), 2.0, f"{doomed.name} gone"
        )
    # the flow that went to it is re-balanced on its next packet
    sticky.sendto(b"again", (x2.rr_ip, 30443))
    answer = json_of(sticky.recv(4096))
    assert answer["instance"] in {x2.instances[0].name, x2.instances[1].name}
    sticky.close()
    counts = spread(client, x2.rr_ip, 20)
    assert set(counts) == {x2.instances[0].name, x2.instances[1].name}, counts
    assert time.monotonic() - started < 10


def flow_to(client, service_ip: str, wanted: str) -> socket.socket:
    """A UDP socket in `client` whose flow to service_ip landed on `wanted` (twice)."""
    for _ in range(12):
        sock = client.container.sockets.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(3)
        answers = []
        for _ in range(2):
            sock.sendto(b"x", (service_ip, 30443))
            answers.append(json_of(sock.recv(4096))["instance"])
        if answers == [wanted, wanted]:
            return sock
        assert answers[0] == answers[1], f"a flow changed instance: {answers}"
        sock.close()
    raise AssertionError(f"no flow from {client.name} reached {wanted}")


def json_of(data: bytes) -> dict:
    return json.loads(data)


def pools(cluster) -> dict[str, float]:
    samples = parse_metrics(cluster.root_api("GET", "/metrics").body)
    names = ("service_v4", "rr_v6", "closest_v6", "instance_v6")
    return {p: metric(samples, "oakestra_pool_used", pool=p) for p in names}


def test_service_removal_releases_its_addresses_at_the_root(app) -> None:
    cluster, orch, x1, _x2 = app
    before = pools(cluster)
    x5: Service = orch.deploy_service("X", "X5", rr_ip="10.30.5.5", rr_ip_v6="fdff:2000::55")
    orch.deploy_instance(x5, cluster.workers[1])
    client = x1.instances[0]
    assert client.container.http_get(x5.rr_ip)["instance"] == f"{x5.job_name}.0"
    assert pools(cluster) == {
        "service_v4": before["service_v4"] + 3,  # RR, Closest, one instance
        "rr_v6": before["rr_v6"] + 1,
        "closest_v6": before["closest_v6"] + 1,
        "instance_v6": before["instance_v6"] + 1,
    }

    orch.remove_service(x5)

    assert pools(cluster) == before
    # (that w1, which used X5, drops its entries: test_system_races.py)
    # the chosen RR IP is free again: another service may take it
    x6 = orch.deploy_service("X", "X6", rr_ip="10.30.5.5", rr_ip_v6="fdff:2000::55")
    assert (x6.rr_ip, x6.rr_ip_v6) == ("10.30.5.5", "fdff:2000::55")


def test_the_configured_backend_carried_the_local_traffic(app, dataplane_mode) -> None:
    cluster, _orch, x1, x2 = app
    w1 = x1.instances[0].worker
    status = w1.status()
    assert status["dataplane_mode"] == dataplane_mode
    spread(x1.instances[0], x2.closest_ip, 3)  # X2.0 is beside X1.0: local
    kernel_flows = w1.status()["counters"]["dataplane"].get("kernel_flows_created", 0)
    if dataplane_mode == "kernel":
        assert kernel_flows >= 3
    else:
        assert kernel_flows == 0


def test_kernel_mode_reaches_the_other_node_through_the_kernel_tunnel(app, dataplane_mode) -> None:
    """X1.0 on w1 calls X1.1 on w2 by its instance IP: in kernel mode, once the nodes'
    probes verified each other, w1's kernel rules take the new connections (to w2 over
    oak-vx0), and the server still sees the caller's instance IP."""
    if dataplane_mode != "kernel":
        pytest.skip("the kernel tunnel exists in kernel mode only")
    _cluster, _orch, x1, _x2 = app
    caller, target = x1.instances[0], x1.instances[1]
    w1 = caller.worker
    assert target.worker is not w1

    def counters() -> dict:
        return w1.status()["counters"]["dataplane"]

    deadline = time.monotonic() + 45
    while True:  # the handshake takes two probe rounds (3 s each); counters come each 1 s
        # Counted only once the tunnel is up: earlier rounds' calls went to the TUN, and
        # a counter read late may still catch up on earlier tests' local kernel flows.
        peers = counters().get("kernel_tunnel_peers", 0)
        before = counters().get("kernel_flows_created", 0)
        answers = [caller.container.http_get(target.instance_ip) for _ in range(3)]
        assert {a["instance"] for a in answers} == {target.name}
        assert {a["client"] for a in answers} == {caller.instance_ip}
        poll_until = time.monotonic() + 2.5
        while counters().get("kernel_flows_created", 0) < before + 3:
            if time.monotonic() > poll_until:
                break
            time.sleep(0.2)
        if peers >= 1 and counters().get("kernel_flows_created", 0) >= before + 3:
            break
        assert time.monotonic() < deadline, (
            f"w1's kernel rules never took the remote calls (tunnel peers {peers})"
        )
    assert counters()["kernel_tunnel_peers"] >= 1
