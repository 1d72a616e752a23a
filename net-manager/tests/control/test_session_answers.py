"""A node's MQTT session keeps the good instances of a table answer with a bad one in it."""

from __future__ import annotations

import json
import queue

import pytest

from net_manager.control.session import NodeSession
from oakestra_net.mqtt import MqttClient, MqttConfig
from testsupport import wait_until

pytestmark = pytest.mark.process

NODE = "node1"
JOB = "X.default.X3.default"


def _instance(number: int, host_ip: str) -> dict:
    instance_ip, instance_ip_v6 = f"10.30.0.{10 + number}", f"fdff::{10 + number:x}"
    return {
        "instance_number": number,
        "instance_ip": instance_ip,
        "instance_ip_v6": instance_ip_v6,
        "cluster_id": "6630f1b2c3d4e5f600000001",
        "namespace_ip": f"10.16.0.{2 + number}",
        "namespace_ip_v6": f"fc00::{2 + number:x}",
        "host_ip": host_ip,
        "host_port": 50103,
        "worker_id": "node1",
        "service_ip": [
            {"IpType": "RR", "Address": "10.30.1.30", "Address_v6": "fdff:2000::1e"},
            {"IpType": "instance_ip", "Address": instance_ip, "Address_v6": instance_ip_v6},
        ],
    }


def test_one_bad_instance_leaves_the_others_reachable_and_is_counted(mosquitto):
    answers: queue.Queue = queue.Queue()
    session = NodeSession(
        MqttConfig(mosquitto.host, mosquitto.port, NODE),
        NODE,
        on_table_result=answers.put,
        on_job_update=lambda _job: None,
    )
    cluster = MqttClient(MqttConfig(mosquitto.host, mosquitto.port, "cluster"))
    session.start()
    cluster.start()
    try:
        wait_until(lambda: session.ready, timeout=10, message="node session not subscribed")
        instances = [_instance(n, "198.18.0.1") for n in range(5)]
        instances[2]["host_ip"] = "not-an-address"
        payload = {"app_name": JOB, "query_key": JOB, "instance_list": instances}
        cluster.publish(f"nodes/{NODE}/net/tablequery/result", json.dumps(payload).encode())
        result = answers.get(timeout=10)
        assert [i.instance_number for i in result.instance_list] == [0, 1, 3, 4]
        assert session.stats()["table_instances_rejected"] == 1
    finally:
        cluster.stop()
        session.stop()
