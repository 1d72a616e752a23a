"""A node daemon in `kernel` mode, end to end in namespaces of our own.

The real daemon (TUN process included) in a node namespace, a real Mosquitto and a
scripted cluster that answers table queries. What a user would see: the first request
to a service IP is a table miss and goes through the TUN as before; once the node knows
the service, new connections are NATed by the kernel (its counters grow, the TUN's
flow counter does not), spread over the instances, with the caller's instance IP as
source; status says `kernel`; stopping the daemon removes our nftables table.
"""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest
from werkzeug.serving import make_server

from net_manager.api import create_app
from net_manager.cli import call, format_status
from net_manager.config import NetConfig
from net_manager.control.daemon import NodeDaemon
from net_manager.dataplane.kernel.ruleset import TABLE
from net_manager.node.kernel import Kernel
from oakestra_net import topics
from oakestra_net.mqtt import MqttClient, MqttConfig
from testsupport import nstools, wait_until

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (apt install nftables)"),
]

NODE_ID = "6630bbbbbbbbbbbbbbbbbbbb"
NODE_IP = "198.18.0.10"
CLIENT, SERVER = "X.default.client.default", "X.default.server.default"
SERVICE_IP = "10.30.5.5"
PORT = 7000


def instance(number: int, namespace_ip: str, instance_ip: str, rr: str) -> dict:
    last = namespace_ip.rsplit(".", 1)[1]
    instance_v6 = "fdff::" + instance_ip.split(".", 2)[2].replace(".", ":")
    return {
        "instance_number": number,
        "instance_ip": instance_ip,
        "instance_ip_v6": instance_v6,
        "cluster_id": "c1",
        "namespace_ip": namespace_ip,
        "namespace_ip_v6": f"fc00::{last}",
        "host_ip": NODE_IP,
        "host_port": 50103,
        "service_ip": [
            {"IpType": "RR", "Address": rr, "Address_v6": "fdff:2000::55"},
            {"IpType": "instance_ip", "Address": instance_ip, "Address_v6": instance_v6},
        ],
    }


JOBS = {
    CLIENT: [instance(0, "10.16.0.2", "10.30.0.2", "10.30.5.2")],
    SERVER: [
        instance(0, "10.16.0.3", "10.30.0.3", SERVICE_IP),
        instance(1, "10.16.0.4", "10.30.0.4", SERVICE_IP),
    ],
}
KEYS = {CLIENT: CLIENT, SERVER: SERVER, SERVICE_IP: SERVER}


class Cluster:
    """Hands out the subnet and answers table queries by job name or service IP."""

    def __init__(self, broker) -> None:
        self.queries: list[str] = []
        self.client = MqttClient(MqttConfig("127.0.0.1", broker.port, "scripted-cluster-k"))
        self.client.subscribe(topics.CLUSTER_SUBSCRIPTION, self._on_message)
        self.client.start()
        assert self.client.wait_subscribed(topics.CLUSTER_SUBSCRIPTION, 10)

    def _on_message(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse_node_topic(topic)
        if parsed is None or parsed.kind.endswith("result"):
            return
        body = json.loads(payload)
        if parsed.kind == topics.SUBNET and body.get("METHOD") == "GET":
            self._send(parsed.node_id, topics.SUBNET_RESULT, {"address": "10.16.0.0",
                                                             "addressv6": "fc00::"})  # fmt: skip
        if parsed.kind == topics.TABLEQUERY_REQUEST:
            key = body["sip"] or body["sname"]
            self.queries.append(key)
            job = KEYS.get(key)
            instances = JOBS.get(job or "", [])
            if key == SERVER and SERVICE_IP not in self.queries:
                instances = []  # not placed yet: the node learns the service by a miss
            answer = {"app_name": job, "query_key": key, "instance_list": instances}
            self._send(parsed.node_id, topics.TABLEQUERY_RESULT, answer)

    def _send(self, node_id: str, kind: str, body: dict) -> None:
        self.client.publish(topics.node_topic(node_id, kind), json.dumps(body))

    def stop(self) -> None:
        self.client.stop()


@pytest.fixture
def ns():
    with nstools.namespaces() as tracker:
        yield tracker


@pytest.fixture
def cluster(mosquitto):
    scripted = Cluster(mosquitto)
    yield scripted
    scripted.stop()


@pytest.fixture
def daemon(ns, tmp_path, mosquitto):
    node_ns = ns.netns()
    config = NetConfig(
        node_public_address=NODE_IP,
        cluster_url="127.0.0.1",
        cluster_mqtt_port=mosquitto.port,
        socket_path=str(tmp_path / "netmanager.sock"),
        state_file=str(tmp_path / "state.json"),
        dataplane_mode="kernel",
    )
    kernel = Kernel(netns=node_ns)
    netns_exec = ["nsenter", f"--net=/run/netns/{node_ns}", "--"]
    node = NodeDaemon(config, kernel=kernel, netns_exec=netns_exec)
    node.start()
    server = make_server(f"unix://{config.socket_path}", 0, create_app(node), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = lambda method, path, body=None: call(config.socket_path, method, path, body)  # noqa: E731
    try:
        yield node_ns, node, api
    finally:
        server.shutdown()
        server.server_close()
        node.stop()
        kernel.close()


def ask(container: nstools.Container, host: str) -> tuple[str, str]:
    tag, peer = nstools.tcp_request(container.netns_path, host, PORT, timeout=5).split()
    return tag, peer


def fresh_report(node: NodeDaemon) -> None:
    """Wait until the TUN process sent counters taken after this call."""
    supervisor = node.dataplane.inner  # type: ignore[union-attr]
    seen = supervisor.reports
    wait_until(lambda: supervisor.reports >= seen + 2, timeout=5)


def test_kernel_mode_serves_known_services_and_leaves_misses_to_the_tun(daemon, cluster, ns):
    node_ns, node, api = daemon
    assert api("POST", "/register", {"client_id": NODE_ID, "cluster_address": ""})[0] == 200
    wait_until(lambda: api("GET", "/status")[1]["counters"]["dataplane"].get("running"))
    status = api("GET", "/status")[1]
    assert status["dataplane_mode"] == "kernel"
    assert "data plane  kernel" in format_status(status).splitlines()  # net-manager status
    containers = {}
    for job, number in ((CLIENT, 0), (SERVER, 0), (SERVER, 1)):
        container = ns.container()
        body = {"pid": container.pid, "serviceName": job, "instanceNumber": number}
        status, answer = api("POST", "/container/deploy", {**body, "portMappings": ""})
        assert status == 200, answer
        containers[(job, number)] = container
    for number in (0, 1):
        server = nstools.tcp_echo_server(containers[(SERVER, number)].netns_path, "::", PORT,
                                         f"s{number}")  # fmt: skip
        ns.track(server)
    client = containers[(CLIENT, 0)]
    # the client's own instance IP is known once its job's table arrived
    wait_until(lambda: "10.30.0.2" in {e["instance_ip"] for e in api("GET", "/status")[1]["table"]})

    # a miss: the TUN queues the packet, asks the cluster, and delivers
    assert ask(client, SERVICE_IP)[1] == "10.30.0.2"
    assert SERVICE_IP in cluster.queries
    wait_until(lambda: node.dataplane.counters().get("kernel_services", 0) > 0)
    fresh_report(node)
    tun_flows = node.dataplane.counters()["flows_created"]
    assert tun_flows > 0  # the miss went through the TUN
    kernel_flows = node.dataplane.counters()["kernel_flows_created"]

    answers = [ask(client, SERVICE_IP) for _ in range(4)]
    assert sorted(tag for tag, _ in answers) == ["s0", "s0", "s1", "s1"]
    assert {peer for _, peer in answers} == {"10.30.0.2"}
    wait_until(lambda: node.dataplane.counters()["kernel_flows_created"] >= kernel_flows + 4)
    fresh_report(node)
    assert node.dataplane.counters()["flows_created"] == tun_flows
    assert TABLE in nstools.run_in(node_ns, ["nft", "list", "tables"]).stdout

    node.dataplane.stop()  # what the daemon's stop does first
    assert TABLE not in nstools.run_in(node_ns, ["nft", "list", "tables"]).stdout
