"""Two root and two cluster service manager processes on one MongoDB-wire database.

Runs in the mongo tier (`make test-mongo`), which starts the server: addresses stay
unique when both roots hand them out at once, and nodes served by both cluster
processes (shared MQTT subscription) get one subnet each, the same one when they ask
again, and see their reports in the tables either process answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from oakestra_net.mqtt import MqttClient, MqttConfig
from testsupport import free_port, wait_until

pytestmark = [pytest.mark.system, pytest.mark.slow]

CLUSTER_ID = "6630c0000000000000000c01"


def _program(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class Service:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = int(env["MY_PORT"])
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                argv,
                env={**os.environ, "LOG_LEVEL": "WARNING", **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def healthy(self) -> bool:
        assert self.process.poll() is None, f"{self.name} exited: {self.log.read_text()[-2000:]}"
        try:
            reply = requests.get(self.url("/healthz"), timeout=2)
        except requests.RequestException:
            return False
        return reply.status_code == 200 and reply.json()["store"] == "mongodb"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def pair(mongo_url, mosquitto, tmp_path):
    """Roots r1, r2 on one database; clusters c1 (via r1), c2 (via r2) on another."""
    suffix = uuid.uuid4().hex[:8]
    services: dict[str, Service] = {}
    try:
        for name in ("r1", "r2"):
            env = {"MY_PORT": str(free_port()), "MONGO_URL": f"{mongo_url}shared_root_{suffix}"}
            env["BIND"] = f"127.0.0.1:{env['MY_PORT']}"
            services[name] = Service(
                name, [_program("root-service-manager")], env, tmp_path / f"{name}.log"
            )
        for name in ("r1", "r2"):
            wait_until(services[name].healthy, timeout=30, message=f"{name} not healthy")
        for name, root in (("c1", "r1"), ("c2", "r2")):
            port = str(free_port())
            env = {
                "MY_PORT": port,
                "BIND": f"127.0.0.1:{port}",
                "MONGO_URL": f"{mongo_url}shared_cluster_{suffix}",
                "MQTT_BROKER_URL": mosquitto.host,
                "MQTT_BROKER_PORT": str(mosquitto.port),
                "ROOT_SERVICE_MANAGER_URL": "127.0.0.1",
                "ROOT_SERVICE_MANAGER_PORT": str(services[root].port),
            }
            services[name] = Service(
                name, [_program("cluster-service-manager")], env, tmp_path / f"{name}.log"
            )
        for name in ("c1", "c2"):
            wait_until(services[name].healthy, timeout=30, message=f"{name} not healthy")
        body = {"cluster_id": CLUSTER_ID, "cluster_address": "127.0.0.1"}
        body["cluster_port"] = services["c1"].port
        assert requests.post(services["r1"].url("/api/net/cluster"), json=body).ok

        def allocating() -> bool:  # a root on a new store waits for its clusters' state
            return (
                requests.get(services["r1"].url("/healthz"), timeout=5).json()["rebuilding"]
                is False
            )

        wait_until(allocating, timeout=60, message="the roots' rebuild gate did not open")
        yield services
    finally:
        for service in services.values():
            service.stop()


def _ok(reply: requests.Response) -> dict:
    assert reply.status_code == 200, (reply.url, reply.status_code, reply.text)
    return reply.json()


def _deploy(root: Service, index: int) -> dict:
    job_id = f"6630{index:020x}"
    descriptor = {"app_name": "shared", "app_ns": "default", "service_ns": "default"}
    descriptor["service_name"] = f"s{index}"
    service = _ok(
        requests.post(
            root.url("/api/net/service/deploy"),
            json={"_id": job_id, "deployment_descriptor": descriptor},
            timeout=10,
        )
    )
    body = {"_id": job_id, "instance_number": 0, "cluster_id": CLUSTER_ID}
    instance = _ok(requests.post(root.url("/api/net/instance/deploy"), json=body, timeout=10))
    return {"service": service, "instance": instance["instance"]}


def test_two_roots_never_hand_out_one_address_twice(pair):
    roots = [pair["r1"], pair["r2"]]
    with ThreadPoolExecutor(8) as pool:
        subnets = list(
            pool.map(
                lambda i: _ok(requests.get(roots[i % 2].url("/api/net/subnet"), timeout=10)),
                range(60),
            )
        )
        deployed = list(pool.map(lambda i: _deploy(roots[i % 2], i), range(30)))
    v4 = [s["subnet_addr"] for s in subnets]
    v6 = [s["subnet_addr_v6"] for s in subnets]
    assert len(set(v4)) == 60 and len(set(v6)) == 60
    addresses = [e["Address"] for d in deployed for e in d["service"]["service_ip_list"]]
    addresses += [d["instance"]["instance_ip"] for d in deployed]
    assert len(addresses) == 90 and len(set(addresses)) == 90


def test_nodes_served_by_two_cluster_processes(pair, mosquitto, mqtt_recorder):
    answers = mqtt_recorder("nodes/+/net/+/result")
    publisher = MqttClient(
        MqttConfig(
            host=mosquitto.host, port=mosquitto.port, client_id="nodes-" + uuid.uuid4().hex[:8]
        ),
        workers=1,
        name="nodes",
    )
    publisher.start()
    wait_until(lambda: publisher.connected, timeout=5)
    nodes = [f"node{i:02d}" for i in range(12)]
    try:
        first = {}
        for node in nodes:
            publisher.publish(f"nodes/{node}/net/subnet", json.dumps({"METHOD": "GET"}))
        for node in nodes:
            first[node] = answers.wait_for(f"nodes/{node}/net/subnetwork/result", 15).payload
        assert len({a["address"] for a in first.values()}) == len(nodes)
        # asking again after the answer (either process may serve it): the same subnet
        answers.clear()
        for node in nodes:
            publisher.publish(f"nodes/{node}/net/subnet", json.dumps({"METHOD": "GET"}))
        for node in nodes:
            again = answers.wait_for(f"nodes/{node}/net/subnetwork/result", 15).payload
            assert again == first[node]

        job = _deploy(pair["r1"], 500)["service"]["job_name"]
        assert requests.post(pair["c2"].url("/api/net/deployment"), json={"job_name": job}).ok
        report = {
            "appname": job,
            "status": "DEPLOYED",
            "instance_number": 0,
            "nsip": first[nodes[0]]["address"].rsplit(".", 1)[0] + ".2",
            "nsipv6": "",
            "host_ip": "127.0.0.1",
            "host_port": "50103",
        }
        publisher.publish(f"nodes/{nodes[0]}/net/service/deployed", json.dumps(report))

        def located(node: str) -> bool:
            answers.clear()
            publisher.publish(
                f"nodes/{node}/net/tablequery/request", json.dumps({"sname": job, "sip": ""})
            )
            answer = answers.wait_for(f"nodes/{node}/net/tablequery/result", 10).payload
            return len(answer["instance_list"]) == 1

        for node in nodes:  # queries spread over both processes see the report
            wait_until(lambda n=node: located(n), timeout=15, message=f"{node}: not located")
    finally:
        publisher.stop()
