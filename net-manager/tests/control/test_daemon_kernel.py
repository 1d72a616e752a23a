"""The node daemon end to end in namespaces: the node engine's calls over the unix socket.

A real Mosquitto, a scripted cluster service manager (answers subnet requests and
table queries), a node namespace the daemon configures through `Kernel(netns=…)`, and
containers that are processes in namespaces of their own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import threading

import pytest
from werkzeug.serving import make_server

from net_manager.api import create_app
from net_manager.cli import call
from net_manager.config import NetConfig
from net_manager.control import daemon as daemon_module
from net_manager.control.daemon import NodeDaemon, veth_names
from net_manager.node.kernel import BRIDGE, Kernel
from net_manager.node.tunnel import DEVICE as TUNNEL_DEVICE
from oakestra_net import topics
from oakestra_net.mqtt import MqttClient, MqttConfig
from testsupport import nstools, wait_until

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
]

NODE_ID = "6630aaaaaaaaaaaaaaaaaaaa"
X1 = "X.default.X1.default"


class ScriptedCluster:
    """Answers like a cluster service manager would, and records what nodes publish."""

    def __init__(self, broker, subnet=("10.16.0.0", "fc00::")) -> None:
        self.subnet = subnet
        self.published: list[tuple[str, dict]] = []
        self.tables: dict[str, list[dict]] = {}
        self.client = MqttClient(MqttConfig("127.0.0.1", broker.port, "scripted-cluster"))
        self.client.subscribe(topics.CLUSTER_SUBSCRIPTION, self._on_message)
        self.client.start()
        assert self.client.wait_subscribed(topics.CLUSTER_SUBSCRIPTION, 10)

    def _on_message(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse_node_topic(topic)
        if parsed is None or parsed.kind.endswith("result"):
            return
        body = json.loads(payload)
        self.published.append((parsed.kind, body))
        if parsed.kind == topics.SUBNET and body.get("METHOD") == "GET":
            answer = {"address": self.subnet[0], "addressv6": self.subnet[1]}
            self.client.publish(
                topics.node_topic(parsed.node_id, topics.SUBNET_RESULT), json.dumps(answer)
            )
        if parsed.kind == topics.TABLEQUERY_REQUEST:
            key = body["sip"] or body["sname"]
            answer = {
                "app_name": body["sname"] or None,
                "query_key": key,
                "instance_list": self.tables.get(key, []),
            }
            self.client.publish(
                topics.node_topic(parsed.node_id, topics.TABLEQUERY_RESULT), json.dumps(answer)
            )

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.published]

    def stop(self) -> None:
        self.client.stop()


@pytest.fixture
def ns():
    with nstools.namespaces() as tracker:
        yield tracker


@pytest.fixture
def node(ns, tmp_path, mosquitto):
    name = ns.netns()
    config = NetConfig(
        node_public_address="198.18.0.10",
        cluster_url="127.0.0.1",
        cluster_mqtt_port=mosquitto.port,
        socket_path=str(tmp_path / "netmanager.sock"),
        state_file=str(tmp_path / "state" / "state.json"),
    )
    return name, config


class Running:
    """A daemon serving its API on a unix socket, like `net-manager run`."""

    def __init__(self, node_ns: str, config: NetConfig) -> None:
        self.kernel = self.make_kernel(node_ns)
        self.daemon = self.make_daemon(node_ns, config)
        self.daemon.start()
        self.socket = config.socket_path
        self.server = make_server(
            f"unix://{self.socket}", 0, create_app(self.daemon), threaded=True
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def make_kernel(self, node_ns: str) -> Kernel:
        return Kernel(netns=node_ns)

    def make_daemon(self, node_ns: str, config: NetConfig) -> NodeDaemon:
        netns_exec = ["nsenter", f"--net=/run/netns/{node_ns}", "--"]
        return NodeDaemon(config, kernel=self.kernel, netns_exec=netns_exec)

    def call(self, method: str, path: str, body=None):
        return call(self.socket, method, path, body)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.daemon.stop()
        self.kernel.close()


@pytest.fixture
def running(node):
    started: list[Running] = []

    def start() -> Running:
        instance = Running(*node)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
def cluster(mosquitto):
    scripted = ScriptedCluster(mosquitto)
    yield scripted
    scripted.stop()


def register(daemon: Running) -> None:
    status, body = daemon.call("POST", "/register", {"client_id": NODE_ID, "cluster_address": ""})
    assert status == 200, body


def test_calls_before_registration_are_refused(running):
    daemon = running()
    status, body = daemon.call(
        "POST",
        "/container/deploy",
        {"pid": os.getpid(), "serviceName": X1, "instanceNumber": 0, "portMappings": ""},
    )
    assert status == 400
    assert "not registered" in body["reason"]


def test_register_times_out_with_503_then_succeeds(running, monkeypatch, mosquitto):
    monkeypatch.setattr(daemon_module, "REGISTER_BUDGET_SECONDS", 1.5)
    daemon = running()
    status, body = daemon.call("POST", "/register", {"client_id": NODE_ID, "cluster_address": ""})
    assert status == 503
    assert "did not hand out a subnet" in body["reason"]
    cluster = ScriptedCluster(mosquitto)
    try:
        register(daemon)
        register(daemon)  # the same id again: fine
        status, body = daemon.call(
            "POST", "/register", {"client_id": "other", "cluster_address": ""}
        )
        assert status == 400 and NODE_ID in body["reason"]
    finally:
        cluster.stop()


def test_node_engine_sequence(running, cluster, ns, node):
    node_ns, _config = node
    daemon = running()
    register(daemon)
    bridge = nstools.run_in(node_ns, ["ip", "-j", "addr", "show", BRIDGE]).stdout
    assert "10.16.0.1" in bridge and "fc00::1" in bridge
    # the data plane process runs and owns the TUN with the platform routes
    wait_until(lambda: daemon.call("GET", "/status")[1]["counters"]["dataplane"].get("running"))
    tun = nstools.run_in(node_ns, ["ip", "-j", "addr", "show", "oak-tun0"]).stdout
    assert "10.19.1.254" in tun and "fcef::dead:beef" in tun
    metrics = daemon.call("GET", "/metrics")[1]
    assert 'oakestra_dataplane{name="running"} 1.0' in metrics

    first, second = ns.container(), ns.container()
    answers = []
    for number, container in enumerate((first, second)):
        status, body = daemon.call(
            "POST",
            "/container/deploy",
            {
                "pid": container.pid,
                "serviceName": X1,
                "instanceNumber": number,
                "portMappings": "8080:80" if number == 0 else "",
            },
        )
        assert status == 200, body
        answers.append(body)
    assert answers[0] == {"serviceName": X1, "nsAddress": "10.16.0.2", "nsAddressv6": "fc00::2"}
    assert answers[1]["nsAddress"] == "10.16.0.3"

    # the two containers reach each other by namespace IP, v4 and v6
    server = ns.track(nstools.tcp_echo_server(second.netns_path, "::", 7000, "x1-1"))
    assert nstools.tcp_request(first.netns_path, "10.16.0.3", 7000).startswith("x1-1")
    assert nstools.tcp_request(first.netns_path, "fc00::3", 7000).startswith("x1-1")
    nstools.stop_process(server)

    # the cluster heard about both, with upstream's payload, and was asked for X1's table
    # (a report is sent again while the table answers leave the instance out, as this
    # scripted cluster's do: count instances, not messages)
    def deployed_instances() -> set[int]:
        return {
            body["instance_number"]
            for kind, body in cluster.published
            if kind == topics.SERVICE_DEPLOYED
        }

    wait_until(lambda: deployed_instances() == {0, 1})
    deployed = [body for kind, body in cluster.published if kind == topics.SERVICE_DEPLOYED]
    assert deployed[0] == {
        "appname": X1,
        "status": "DEPLOYED",
        "instance_number": 0,
        "nsip": "10.16.0.2",
        "nsipv6": "fc00::2",
        "host_ip": "198.18.0.10",
        "host_port": "50103",
    }
    wait_until(lambda: topics.TABLEQUERY_REQUEST in cluster.kinds())
    status = daemon.call("GET", "/status")[1]
    assert [i["instance"] for i in status["instances"]] == [f"{X1}.0", f"{X1}.1"]
    assert status["interests"][X1]["local"] == 2

    # undeploy: the veth and the port mapping go, the cluster is told
    status, _ = daemon.call(
        "POST",
        "/container/undeploy",
        {"serviceName": X1, "instanceNumber": 0, "pid": -1, "portMappings": ""},
    )
    assert status == 200
    host_veth, _peer = veth_names(f"{X1}.0")
    assert not daemon.kernel.link_exists(host_veth)
    assert daemon.kernel.list_port_mappings() == []
    wait_until(lambda: topics.SERVICE_UNDEPLOYED in cluster.kinds())
    # again: unknown instance, still fine (the node engine may repeat itself)
    assert (
        daemon.call("POST", "/docker/undeploy", {"serviceName": X1, "instanceNumber": 0})[0] == 200
    )


def test_restart_re_adopts_live_containers(running, cluster, ns):
    daemon = running()
    register(daemon)
    container = ns.container()
    body = daemon.call(
        "POST",
        "/container/deploy",
        {"pid": container.pid, "serviceName": X1, "instanceNumber": 0, "portMappings": ""},
    )[1]
    gone = ns.container()
    daemon.call(
        "POST",
        "/container/deploy",
        {"pid": gone.pid, "serviceName": X1, "instanceNumber": 1, "portMappings": ""},
    )
    daemon.stop()
    nstools.stop_process(gone.proc)  # this one dies while the daemon is down

    again = running()
    status = again.call("GET", "/status")[1]
    assert status["registered"] and status["node_id"] == NODE_ID
    assert [(i["instance"], i["namespace_ip"]) for i in status["instances"]] == [
        (f"{X1}.0", body["nsAddress"])
    ]
    host_veth, _peer = veth_names(f"{X1}.0")
    assert again.kernel.link_exists(host_veth)
    # the same container deployed again (node engine retry) keeps its addresses
    repeat = again.call(
        "POST",
        "/container/deploy",
        {"pid": container.pid, "serviceName": X1, "instanceNumber": 0, "portMappings": ""},
    )[1]
    assert repeat == body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json", "JSON object"),
        ({"pid": 1, "serviceName": "X1", "instanceNumber": 0}, "serviceName"),
        ({"pid": "1", "serviceName": X1, "instanceNumber": 0}, "pid"),
        ({"pid": 999999999, "serviceName": X1, "instanceNumber": 0}, "pid 999999999"),
        ({"pid": 1, "serviceName": X1, "instanceNumber": -1}, "instanceNumber"),
        ({"pid": 1, "serviceName": X1, "instanceNumber": 0, "portMappings": "80:80-80"}, "80-80"),
    ],
)
def test_bad_deploy_calls_get_400_and_change_nothing(running, cluster, body, reason):
    daemon = running()
    register(daemon)
    before = daemon.call("GET", "/status")[1]["instances"]
    if isinstance(body, str):
        status, answer = _raw(daemon.socket, body)
    else:
        status, answer = daemon.call("POST", "/container/deploy", body)
    assert status == 400
    assert reason in answer["reason"]
    assert daemon.call("GET", "/status")[1]["instances"] == before


def _raw(socket_path: str, text: str, path: str = "/container/deploy"):
    from net_manager.cli import UnixHTTPConnection

    connection = UnixHTTPConnection(socket_path)
    connection.request("POST", path, text, {"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# 300 cycles in `make test` (a leak of one descriptor per 75 cycles shows; the bug was two
# per cycle); the soak of the issue is `OAKESTRA_FD_CYCLES=1000` (~110 s on 2 cores).
FD_CYCLES = int(os.environ.get("OAKESTRA_FD_CYCLES", "300"))


@pytest.mark.slow
def test_no_file_descriptor_leak_over_many_deploy_undeploy_cycles(running, cluster, ns):
    """Each API request runs on a thread of its own; the node's netlink socket must not
    multiply with them (it did: two sockets per cycle until deploys failed at the limit)."""
    daemon = running()  # in this process: its descriptors are ours
    register(daemon)
    container = ns.container()
    deploy = {"pid": container.pid, "serviceName": X1, "instanceNumber": 0, "portMappings": ""}
    undeploy = {"serviceName": X1, "instanceNumber": 0}

    def cycle() -> None:
        status, body = daemon.call("POST", "/container/deploy", deploy)
        assert status == 200, body
        status, body = daemon.call("POST", "/container/undeploy", undeploy)
        assert status == 200, body

    for _ in range(5):  # warm up: lazily opened sockets, thread pools, the data plane
        cycle()
    before = _open_fds()
    for _ in range(FD_CYCLES):
        cycle()
    assert _open_fds() - before <= 3, f"{before} -> {_open_fds()} descriptors"
    host_veth, _peer = veth_names(f"{X1}.0")
    assert not daemon.kernel.link_exists(host_veth)


# ---------------------------------------------------------------- bad input at the socket


def _deploy(daemon: Running, pid: int, number: int, ports: str = ""):
    body = {"pid": pid, "serviceName": X1, "instanceNumber": number, "portMappings": ports}
    return daemon.call("POST", "/container/deploy", body)


def test_deeply_nested_json_is_400_on_every_post(running, cluster, ns):
    daemon = running()
    deep = "[" * 10_000 + "]" * 10_000  # the JSON parser's recursion gave out at ~1,000
    for path in ("/register", "/container/deploy", "/docker/undeploy", "/unikernel/deploy"):
        status, answer = _raw(daemon.socket, deep, path)
        assert status == 400, (path, answer)
        assert "nested too deeply" in answer["reason"]
    status, answer = _raw(daemon.socket, "[" * 100_000, "/register")
    assert status == 413 and answer["error"] == "Request Entity Too Large"
    register(daemon)
    container = ns.container()
    nested_extra = (
        f'{{"pid": {container.pid}, "serviceName": "{X1}", "instanceNumber": 0, '
        f'"portMappings": "", "extra": {"[" * 5000}{"]" * 5000}}}'
    )
    status, answer = _raw(daemon.socket, nested_extra)
    assert status == 400 and "nested too deeply" in answer["reason"]
    assert daemon.call("GET", "/status")[1]["instances"] == []
    # brackets inside strings do not count: a flat body with "[[[[…" in a value is fine
    flat = (
        f'{{"pid": {container.pid}, "serviceName": "{X1}", "instanceNumber": 0, '
        f'"portMappings": "", "note": "{"[" * 5000}\\"{"{" * 100}"}}'
    )
    status, answer = _raw(daemon.socket, flat)
    assert status == 200, answer


def test_what_one_instance_claims_is_409_for_another(running, cluster, ns, node, mosquitto):
    node_ns, _config = node
    daemon = running()
    register(daemon)
    first, second = ns.container(), ns.container()
    status, answer = _deploy(daemon, first.pid, 0, "8080:80")
    assert status == 200, answer
    first_ip = answer["nsAddress"]

    # the same container again as another instance: refused, the first keeps its address
    status, answer = _deploy(daemon, first.pid, 1)
    assert status == 409 and f"{X1}.0" in answer["reason"] and "pid" in answer["reason"]
    inside = _container_addresses(first.pid)
    assert first_ip in inside

    # a host port another container maps: refused; the other protocol is free
    status, answer = _deploy(daemon, second.pid, 1, "8080:81")
    assert status == 409 and "8080/tcp" in answer["reason"] and f"{X1}.0" in answer["reason"]
    # the node's own ports: tunnel, broker, API
    daemon.daemon.config = dataclasses.replace(daemon.daemon.config, tcp_port=18099)
    for ports, what in (
        ("50103/udp", "tunnel port"),
        (f"{mosquitto.port}:80", "broker port"),
        ("18099:80", "API port"),
    ):
        status, answer = _deploy(daemon, second.pid, 1, ports)
        assert status == 409, answer
        assert what in answer["reason"] and "portMappings" in answer["reason"]
    status, answer = _deploy(daemon, second.pid, 1, "8080:81/udp")
    assert status == 200, answer
    instances = daemon.call("GET", "/status")[1]["instances"]
    assert [(i["instance"], i["namespace_ip"]) for i in instances] == [
        (f"{X1}.0", first_ip),
        (f"{X1}.1", answer["nsAddress"]),
    ]


def test_the_nodes_own_pid_is_400(running, cluster, ns, node):
    node_ns, _config = node
    daemon = running()
    register(daemon)
    host_process = ns.track(nstools.popen_in(node_ns, ["sleep", "60"]))
    node_file = os.stat(f"/run/netns/{node_ns}")
    wait_until(
        lambda: os.stat(f"/proc/{host_process.pid}/ns/net").st_ino == node_file.st_ino,
        message="process entered the node namespace",
    )

    # the kernel tunnel device comes and goes with the data plane's first table, on its own
    def container_links() -> list[str]:
        return [link for link in daemon.kernel.list_links() if link != TUNNEL_DEVICE]

    links_before = container_links()
    status, answer = _deploy(daemon, host_process.pid, 0)
    assert status == 400, answer
    assert "node's own network namespace" in answer["reason"]
    assert daemon.call("GET", "/status")[1]["instances"] == []
    assert container_links() == links_before


def _container_addresses(pid: int) -> str:
    return subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-j", "addr", "show", "eth0"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
