"""The broker configuration we ship (mosquitto/), attacked with a real Mosquitto.

The shipped mosquitto.conf (paths moved into the test's directory) with a password file
made by `oakestra_net.broker_auth` and the shipped ACL, which must be what the tool
writes. Nodes and the cluster are plain MQTT clients with their credentials: what the
broker lets through is what the cluster service manager would act on.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from oakestra_net import broker_auth
from oakestra_net.mqtt import MqttClient, MqttConfig
from testbed.pki import issue_run_certificates
from testsupport import Broker, wait_until

pytestmark = pytest.mark.system

pytestmark = pytest.mark.process  # real broker / server / subprocess

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "mosquitto"
NODE_A, NODE_B = "6630a0a0a0a0a0a0a0a0a0a0", "6630b0b0b0b0b0b0b0b0b0b0"
USERS = {broker_auth.CLUSTER_USER: "c-secret", NODE_A: "a-secret", NODE_B: "b-secret"}
QUIET = 0.3  # after a message that did arrive, how long one that must not may still come


def shipped_config(passwd: Path, acl: Path) -> list[str]:
    """mosquitto.conf's settings, minus listener and logging (the Broker fixture's)."""
    lines = []
    for line in (SHIPPED / "mosquitto.conf").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key = line.split()[0]
        if key in ("listener", "log_dest", "log_type", "allow_anonymous"):
            continue
        lines.append(
            line.replace("/mosquitto/config/passwd", str(passwd)).replace(
                "/mosquitto/config/acl", str(acl)
            )
        )
    return lines


@pytest.fixture
def broker(tmp_path):
    passwd = tmp_path / "passwd"
    for user, password in USERS.items():
        broker_auth.set_password(passwd, user, password)
    acl = tmp_path / "acl"
    acl.write_text((SHIPPED / "acl").read_text())
    server = Broker(tmp_path, allow_anonymous=False, extra_config=shipped_config(passwd, acl))
    server.start()
    yield server
    server.stop()


class Client:
    """An MQTT client that records what it receives and whether it was thrown out."""

    def __init__(
        self,
        broker: Broker,
        user: str | None,
        password: str | None = None,
        client_id: str | None = None,
    ) -> None:
        self.received: list[tuple[str, bytes]] = []
        config = MqttConfig(
            broker.host,
            broker.port,
            client_id or user or "anonymous",
            username=user,
            password=password or USERS.get(user or ""),
            min_reconnect_delay=0.1,
            max_reconnect_delay=0.5,
        )
        self.mqtt = MqttClient(config, workers=1, name=f"client-{client_id or user}")

    def listen(self, pattern: str) -> Client:
        self.mqtt.subscribe(pattern, lambda t, p: self.received.append((t, p)))
        return self

    def start(self) -> Client:
        self.mqtt.start()
        return self

    def topics(self) -> list[str]:
        return [topic for topic, _payload in self.received]


@pytest.fixture
def clients():
    started: list[Client] = []

    def make(*args, **kwargs) -> Client:
        client = Client(*args, **kwargs)
        started.append(client)
        return client

    yield make
    for client in started:
        client.mqtt.stop()


def test_the_shipped_acl_is_what_the_tool_writes():
    assert (SHIPPED / "acl").read_text() == broker_auth.acl_text()


def test_anonymous_clients_are_refused(broker, clients):
    anonymous = clients(broker, None).listen("#").start()
    assert not anonymous.mqtt.wait_connected(1.5)
    result = subprocess.run(
        ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", "#", "-W", "2"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode != 0
    assert "not authorised" in (result.stderr + result.stdout).lower()


def test_a_wrong_password_is_refused(broker, clients):
    intruder = clients(broker, NODE_A, password="wrong").start()
    assert not intruder.mqtt.wait_connected(1.5)


def test_a_node_cannot_report_or_free_as_another(broker, clients):
    cluster = clients(broker, broker_auth.CLUSTER_USER).listen("nodes/+/net/#").start()
    a = clients(broker, NODE_A).start()
    assert cluster.mqtt.wait_subscribed("nodes/+/net/#", 5)
    assert a.mqtt.wait_connected(5)
    deployed = b'{"appname": "X.default.X3.default", "instance_number": 0}'
    a.mqtt.publish(f"nodes/{NODE_B}/net/service/deployed", deployed)  # B's instance
    a.mqtt.publish(f"nodes/{NODE_B}/net/subnet", b'{"METHOD": "DELETE"}')  # B's subnet
    a.mqtt.publish(f"nodes/{NODE_B}/net/tablequery/result", b"{}")  # a fake answer to B
    a.mqtt.publish(f"nodes/{NODE_A}/net/subnet", b'{"METHOD": "GET"}')
    wait_until(lambda: cluster.received, timeout=5)
    time.sleep(QUIET)
    assert cluster.topics() == [f"nodes/{NODE_A}/net/subnet"]


def test_a_node_reads_only_its_own_results_and_job_updates(broker, clients):
    a = clients(broker, NODE_A).listen("nodes/#").listen("jobs/+/updates_available").start()
    b = clients(broker, NODE_B).start()
    cluster = clients(broker, broker_auth.CLUSTER_USER).start()
    assert a.mqtt.wait_subscribed("jobs/+/updates_available", 5)
    assert cluster.mqtt.wait_connected(5) and b.mqtt.wait_connected(5)
    b.mqtt.publish(f"nodes/{NODE_B}/net/tablequery/request", b'{"sname": "", "sip": "x"}')
    cluster.mqtt.publish(f"nodes/{NODE_B}/net/tablequery/result", b"{}")
    cluster.mqtt.publish(f"nodes/{NODE_B}/net/subnetwork/result", b"{}")
    cluster.mqtt.publish(f"nodes/{NODE_A}/net/tablequery/result", b"{}")
    cluster.mqtt.publish("jobs/X.default.X3.default/updates_available", b"{}")
    wait_until(lambda: len(a.received) >= 2, timeout=5)
    time.sleep(QUIET)
    assert sorted(a.topics()) == [
        "jobs/X.default.X3.default/updates_available",
        f"nodes/{NODE_A}/net/tablequery/result",
    ]


def test_a_client_id_takeover_is_refused(broker, clients):
    """A connecting with B's client id gets its own user name as client id: B stays on."""
    b = clients(broker, NODE_B).listen(f"nodes/{NODE_B}/net/tablequery/result").start()
    assert b.mqtt.wait_subscribed(f"nodes/{NODE_B}/net/tablequery/result", 5)
    impostor = clients(broker, NODE_A, client_id=NODE_B).start()
    anonymous = clients(broker, None, client_id=NODE_B).start()
    assert impostor.mqtt.wait_connected(5)
    assert not anonymous.mqtt.wait_connected(1)
    cluster = clients(broker, broker_auth.CLUSTER_USER).start()
    assert cluster.mqtt.wait_connected(5)
    cluster.mqtt.publish(f"nodes/{NODE_B}/net/tablequery/result", b"{}")
    wait_until(lambda: b.received, timeout=5)
    assert b.mqtt.connected
    assert b.mqtt.stats()["reconnects"] == 0


def test_retained_messages_are_not_kept(broker, clients):
    """Even the cluster's credential cannot leave a result for a node that comes later."""
    subprocess.run(
        [
            "mosquitto_pub",
            *("-h", broker.host, "-p", str(broker.port), "-q", "1", "-r"),
            *("-u", broker_auth.CLUSTER_USER, "-P", USERS[broker_auth.CLUSTER_USER]),
            *("-t", f"nodes/{NODE_A}/net/subnetwork/result", "-m", '{"address": "x"}'),
        ],
        capture_output=True,
        timeout=10,
    )
    late = clients(broker, NODE_A)
    topic = f"nodes/{NODE_A}/net/subnetwork/result"
    late.mqtt.subscribe(topic, lambda t, p: late.received.append((t, p)), accept_retained=True)
    late.start()
    assert late.mqtt.wait_subscribed(topic, 5)
    cluster = clients(broker, broker_auth.CLUSTER_USER).start()
    assert cluster.mqtt.wait_connected(5)
    cluster.mqtt.publish(topic, b"live")
    wait_until(lambda: late.received, timeout=5)
    assert late.received == [(topic, b"live")]


def test_the_cluster_may_share_its_subscription(broker, clients):
    cluster = clients(broker, broker_auth.CLUSTER_USER)
    cluster.listen("$share/cluster-sm/nodes/+/net/#").start()
    a = clients(broker, NODE_A).start()
    assert cluster.mqtt.wait_subscribed("$share/cluster-sm/nodes/+/net/#", 5)
    assert a.mqtt.wait_connected(5)
    a.mqtt.publish(f"nodes/{NODE_A}/net/subnet", b'{"METHOD": "GET"}')
    wait_until(lambda: cluster.topics() == [f"nodes/{NODE_A}/net/subnet"], timeout=5)


def test_mutual_tls_mode_confines_nodes_by_certificate(tmp_path):
    """mosquitto-tls.conf: the certificate's common name is the user the ACL knows."""
    certs = tmp_path / "certs"
    certs.mkdir()
    issue_run_certificates(
        certs, ["127.0.0.1"], {"cluster_net": broker_auth.CLUSTER_USER, "a": NODE_A}
    )
    acl = tmp_path / "acl"
    acl.write_text((SHIPPED / "acl").read_text())
    lines = []
    for line in (SHIPPED / "mosquitto-tls.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#") and line.split()[0] not in (
            "listener", "log_dest", "log_type", "allow_anonymous"
        ):  # fmt: skip
            lines.append(
                line.replace("/mosquitto/config/certs", str(certs)).replace(
                    "/mosquitto/config/acl", str(acl)
                )
            )
    server = Broker(tmp_path / "tls", allow_anonymous=False, extra_config=lines)
    with server:

        def tls_client(stem: str, client_id: str) -> Client:
            client = Client(server, None, client_id=client_id)
            config = MqttConfig(
                server.host,
                server.port,
                client_id,
                ca_file=str(certs / "ca.crt"),
                cert_file=str(certs / f"{stem}.crt"),
                key_file=str(certs / f"{stem}.key"),
                min_reconnect_delay=0.1,
                max_reconnect_delay=0.5,
            )
            client.mqtt = MqttClient(config, workers=1, name=f"tls-{stem}")
            return client

        cluster = tls_client("cluster_net", "cluster").listen("nodes/+/net/#").start()
        a = tls_client("a", NODE_A).start()
        try:
            assert cluster.mqtt.wait_subscribed("nodes/+/net/#", 5)
            assert a.mqtt.wait_connected(5)
            a.mqtt.publish(f"nodes/{NODE_B}/net/service/deployed", b"{}")
            a.mqtt.publish(f"nodes/{NODE_A}/net/service/deployed", b"{}")
            wait_until(lambda: cluster.received, timeout=5)
            time.sleep(QUIET)
            assert cluster.topics() == [f"nodes/{NODE_A}/net/service/deployed"]
        finally:
            cluster.mqtt.stop()
            a.mqtt.stop()
