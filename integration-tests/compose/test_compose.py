"""docker-compose.yml in a real Docker engine, checked as a user would check it.

The repository's compose file and Dockerfiles, unchanged, with only the image
parameters pointing at local stand-ins (no registry is reachable) and the secrets an
operator sets (API token, the cluster's and this node's broker passwords): `docker
compose up --build --wait` runs `broker_init` (CA, certificates, password file) and
brings every other service to healthy; the managers run on the MongoDB service; a node
registers through the net manager container's unix socket, gets a subnet and holds an
MQTT session with its node id as user, over TLS (the broker has no other listener);
the broker refuses anonymous clients, wrong passwords and clear-text MQTT, and accepts
a node added the documented way (`run --rm broker_init add-node`, SIGHUP); a container
(a process in a namespace this test creates) attached through that socket reaches a
local instance by its service IP; `docker compose down --volumes` leaves no container,
volume, network, namespace or device behind.

Everything runs in the engine's own network namespace: the services' published ports
are reached there on 127.0.0.1, the net manager's "host network" is that namespace.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time

import pytest
from bson import ObjectId

from net_manager.cli import call
from testbed.compose_stack import ComposeStack
from testbed.mqtt_handshake import NoConnack, connack
from testbed.netns import stop_pid_process
from testbed.nsnet import NetnsSockets, http_call
from testbed.orchestrator import APP_PORT, ECHO_SERVER, deployment_descriptor
from testbed.topology import unique_prefix

pytestmark = [pytest.mark.compose, pytest.mark.slow]

ONE_SHOT = {"broker_init"}
SERVICES = ONE_SHOT | {
    "mongo_net",
    "cluster_mongo_net",
    "mqtt",
    "root_service_manager",
    "cluster_service_manager",
    "net_manager",
}
CLUSTER_ID = "6630c0000000000000000001"
NODE_ID = "6630c00000000000000000a1"
OTHER_NODE_ID = "6630c00000000000000000a2"
BROKER_PORT = 10003
# what an operator puts in .env (docs/OPERATIONS.md), fresh for every run
SECRETS = {
    "NET_API_TOKEN": secrets.token_urlsafe(24),
    "CLUSTER_MQTT_PASSWORD": secrets.token_urlsafe(18),
    "NODE_MQTT_USERNAME": NODE_ID,
    "NODE_MQTT_PASSWORD": secrets.token_urlsafe(18),
}
AUTH = {"Authorization": f"Bearer {SECRETS['NET_API_TOKEN']}"}
ROOT = "http://127.0.0.1:10099"
CLUSTER = "http://127.0.0.1:10110"
READY = 30.0


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as error:
            last = error
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


@pytest.fixture(scope="module")
def stack(docker_engine, standins, compose_binary):
    project = f"oakd{unique_prefix('').rstrip('-')}"
    env = {**standins.compose_env(), **SECRETS}
    stack = ComposeStack(docker_engine, compose_binary, project, env)
    try:
        stack.up()
    except BaseException:
        for service in SERVICES:
            print(f"--- {service}\n{stack.logs(service)}", file=sys.stderr)
        stack.down()
        raise
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def engine_net(docker_engine):
    """Sockets inside the engine's namespace (where the services publish their ports)."""
    sockets = NetnsSockets(f"/run/netns/{docker_engine.netns}")
    yield sockets
    sockets.close()


@pytest.fixture(scope="module")
def node_socket(stack) -> str:
    return str(stack.volume_path("netmanager_config") / "netmanager.sock")


class Containers:
    """Namespaces with a process each, made by the test, as a node engine would."""

    def __init__(self) -> None:
        self.prefix = unique_prefix()
        self.made: list[tuple[str, subprocess.Popen, NetnsSockets]] = []

    def start(self, name: str):
        netns = f"{self.prefix}{name}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, str(ECHO_SERVER), name, str(APP_PORT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "ready" in line, line
        sockets = NetnsSockets(f"/run/netns/{netns}")
        self.made.append((netns, proc, sockets))
        return proc, sockets

    def close(self) -> None:
        for netns, proc, sockets in self.made:
            sockets.close()
            stop_pid_process(proc)
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
        self.made.clear()


@pytest.fixture(scope="module")
def containers():
    made = Containers()
    yield made
    made.close()


def test_every_service_is_healthy(stack):
    services = stack.services()
    assert set(services) == SERVICES
    for name in ONE_SHOT:
        row = services.pop(name)
        assert (row["State"], row["ExitCode"]) == ("exited", 0), (row, stack.logs(name))
    for name, row in services.items():
        assert row["State"] == "running", (name, row["State"], stack.logs(name))
        assert row["Health"] == "healthy", (name, row["Health"], stack.logs(name))


def test_root_and_cluster_use_the_mongodb_service(stack, engine_net):
    for url in (ROOT, CLUSTER):
        reply = http_call(engine_net, "GET", f"{url}/healthz")
        assert reply.status == 200, reply.body
        assert reply.body["store"] == "mongodb", reply.body

    # Oakestra's system manager registers the cluster with the address the root sees
    address = stack.container_ip("cluster_service_manager")
    body = {"cluster_id": CLUSTER_ID, "cluster_address": address, "cluster_port": "10110"}
    reply = http_call(engine_net, "POST", f"{ROOT}/api/net/cluster", body)
    assert reply.status == 401, reply.body  # the API token is on
    reply = http_call(engine_net, "POST", f"{ROOT}/api/net/cluster", body, headers=AUTH)
    assert reply.status == 200, reply.body


def test_node_registers_through_the_socket_and_gets_a_subnet(stack, node_socket):
    code, answer = call(
        node_socket, "POST", "/register", {"client_id": NODE_ID, "cluster_address": "127.0.0.1"}
    )
    assert code == 200, answer

    def subnet():
        code, status = call(node_socket, "GET", "/status")
        assert code == 200, status
        return status["subnet"] and status

    status = wait_until(subnet, READY, "node subnet")
    assert status["node_id"] == NODE_ID and status["broker_connected"], status
    assert status["subnet"].startswith("10."), status["subnet"]
    # the image has nft and conntrack: `auto` (the default) picks the kernel data plane
    mode = wait_until(lambda: subnet()["dataplane_mode"], READY, "the data plane")
    assert mode == "kernel", subnet()
    # logged in as its node id (the broker's only listener is TLS)
    logs = stack.run("logs", "--no-color", "mqtt", check=False)
    assert f"u'{NODE_ID}'" in logs.stdout + logs.stderr, logs.stdout + logs.stderr


def login(engine_net, **kw) -> int:
    """CONNACK code for one login to the published broker port, as a client on the host."""
    sock = engine_net.connect("127.0.0.1", BROKER_PORT, timeout=5)
    return connack(sock, **kw)


def test_the_broker_speaks_tls_and_refuses_who_has_no_credential(stack, engine_net):
    ca = str(stack.volume_path("broker_ca") / "ca.crt")
    password = SECRETS["NODE_MQTT_PASSWORD"]
    assert login(engine_net, username=NODE_ID, password="wrong", ca_file=ca) != 0
    assert login(engine_net, ca_file=ca) != 0  # anonymous
    with pytest.raises(NoConnack):  # clear text: no MQTT at all, the password stays home
        login(engine_net, username=NODE_ID, password=password)
    # the certificate also names 127.0.0.1: the handshake passes, the login is refused
    assert login(engine_net, username="nobody", password="x", ca_file=ca,
                 server_hostname="127.0.0.1") != 0  # fmt: skip


def test_an_operator_adds_a_node_and_reloads_the_broker(stack, engine_net):
    ca = str(stack.volume_path("broker_ca") / "ca.crt")
    added = stack.run("run", "--rm", "--no-deps", "broker_init", "add-node", OTHER_NODE_ID)
    keys = json.loads(added.stdout[added.stdout.index("{") :])
    assert keys["MqttUsername"] == OTHER_NODE_ID, keys
    credential = {"username": OTHER_NODE_ID, "password": keys["MqttPassword"], "ca_file": ca}
    assert login(engine_net, **credential) != 0  # not before the broker rereads
    stack.run("kill", "-s", "SIGHUP", "mqtt")
    wait_until(lambda: login(engine_net, **credential) == 0, READY, "new node login")
    wrong = {**credential, "password": keys["MqttPassword"] + "x"}
    assert login(engine_net, **wrong) != 0


def deploy(engine_net, node_socket, containers, name: str) -> tuple[str, str]:
    """A service with one instance on the node, as Oakestra deploys it: root, cluster,
    then the node engine's /container/deploy with the container's PID. -> (job, RR IP)"""
    job_id, app_id = str(ObjectId()), str(ObjectId())
    descriptor = deployment_descriptor("composeapp", name, job_id, app_id, None)
    job_name = descriptor["job_name"]
    body = {"deployment_descriptor": descriptor, "_id": job_id}
    reply = http_call(engine_net, "POST", f"{ROOT}/api/net/service/deploy", body, headers=AUTH)
    assert reply.status == 200, reply.body
    rr_ip = next(e["Address"] for e in reply.body["service_ip_list"] if e["IpType"] == "RR")
    body = {"instance_number": 0, "cluster_id": CLUSTER_ID, "_id": job_id}
    reply = http_call(engine_net, "POST", f"{ROOT}/api/net/instance/deploy", body, headers=AUTH)
    assert reply.status == 200, reply.body
    reply = http_call(
        engine_net, "POST", f"{CLUSTER}/api/net/deployment", {"job_name": job_name}, headers=AUTH
    )
    assert reply.status == 200, reply.body
    process, _ = containers.start(name)
    body = {"pid": process.pid, "serviceName": job_name, "instanceNumber": 0, "portMappings": ""}
    code, answer = call(node_socket, "POST", "/container/deploy", body)
    assert code == 200, answer
    return job_name, rr_ip


def test_container_reaches_a_local_instance_by_service_ip(
    stack, engine_net, node_socket, containers
):
    server_job, server_rr_ip = deploy(engine_net, node_socket, containers, "server")
    deploy(engine_net, node_socket, containers, "client")
    client_net = containers.made[-1][2]

    def reached():
        url = f"http://{server_rr_ip}:{APP_PORT}/api/hello"
        reply = http_call(client_net, "GET", url, timeout=3)
        return reply.status == 200 and reply.body

    seen = wait_until(reached, READY, f"{server_rr_ip}:{APP_PORT} from the client container")
    assert seen["instance"] == "server", seen


def test_down_leaves_nothing_behind(stack, docker_engine, containers):
    containers.close()  # the node engine stops its containers before the node goes
    stack.down(volumes=True)
    assert docker_engine.docker("ps", "--all", "--quiet").stdout.split() == []
    assert docker_engine.docker("volume", "ls", "--quiet").stdout.split() == []
    networks = docker_engine.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert sorted(networks) == ["bridge", "host", "none"]
    links = docker_engine.in_namespace(["ip", "-o", "link", "show"]).stdout
    names = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())
    assert names == sorted(["lo", "docker0", "uplink0", "uplink0-peer"]), names
    namespaces = docker_engine.in_namespace(["ls", "-A", "/run/netns"]).stdout.split()
    assert namespaces == [], namespaces
    rules = docker_engine.in_namespace(["iptables-save"]).stdout
    assert "OAK" not in rules, [line for line in rules.splitlines() if "OAK" in line]
