"""The broker configuration we ship: a real Mosquitto with our ACL and a password file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from oakestra_net.mqtt import MqttClient, MqttConfig
from oakestra_net.testing import Broker, mosquitto_password_file, wait_until

pytestmark = pytest.mark.process  # real broker / server / subprocess

ROOT = Path(__file__).resolve().parent.parent
USERS = {"cluster-service-manager": "c-secret", "node1": "n1-secret", "node2": "n2-secret"}


@pytest.fixture
def broker(tmp_path):
    passwd = mosquitto_password_file(tmp_path / "passwd", USERS)
    acl = tmp_path / "acl"
    acl.write_text((ROOT / "mosquitto" / "acl").read_text())
    server = Broker(
        tmp_path,
        allow_anonymous=False,
        extra_config=[f"password_file {passwd}", f"acl_file {acl}"],
    )
    server.start()
    yield server
    server.stop()


class Client:
    def __init__(self, broker: Broker, user: str, password: str | None = None) -> None:
        self.received: list[str] = []
        config = MqttConfig(
            broker.host,
            broker.port,
            f"{user}-client",
            username=user,
            password=password or USERS[user],
        )
        self.mqtt = MqttClient(config)

    def listen(self, pattern: str) -> Client:
        self.mqtt.subscribe(pattern, lambda topic, _payload: self.received.append(topic))
        return self

    def start(self) -> Client:
        self.mqtt.start()
        return self


def test_nodes_publish_only_under_their_own_prefix(broker):
    cluster = Client(broker, "cluster-service-manager").listen("nodes/+/net/#").start()
    node1 = Client(broker, "node1").start()
    try:
        assert cluster.mqtt.wait_subscribed("nodes/+/net/#", 5)
        assert node1.mqtt.wait_connected(5)
        node1.mqtt.publish("nodes/node2/net/subnet", b'{"METHOD": "GET"}')  # impersonation
        node1.mqtt.publish("nodes/node1/net/subnet", b'{"METHOD": "GET"}')
        wait_until(lambda: cluster.received, timeout=5)
        time.sleep(0.3)
        assert cluster.received == ["nodes/node1/net/subnet"]
    finally:
        cluster.mqtt.stop()
        node1.mqtt.stop()


def test_nodes_read_only_their_own_results_and_job_updates(broker):
    node1 = Client(broker, "node1").listen("nodes/+/net/tablequery/result").listen("jobs/#")
    node1.start()
    cluster = Client(broker, "cluster-service-manager").start()
    try:
        assert node1.mqtt.wait_subscribed("jobs/#", 5)
        assert cluster.mqtt.wait_connected(5)
        cluster.mqtt.publish("nodes/node2/net/tablequery/result", b"{}")
        cluster.mqtt.publish("nodes/node1/net/tablequery/result", b"{}")
        cluster.mqtt.publish("jobs/X.default.X3.default/updates_available", b"{}")
        wait_until(lambda: len(node1.received) >= 2, timeout=5)
        time.sleep(0.3)
        assert sorted(node1.received) == [
            "jobs/X.default.X3.default/updates_available",
            "nodes/node1/net/tablequery/result",
        ]
    finally:
        cluster.mqtt.stop()
        node1.mqtt.stop()


def test_a_wrong_password_is_refused(broker):
    intruder = Client(broker, "node1", password="wrong").start()
    try:
        assert not intruder.mqtt.wait_connected(1.5)
    finally:
        intruder.mqtt.stop()
