"""The root is killed and restarted on a fresh embedded store: nothing in use is handed out again.

Real processes (the two console scripts and a Mosquitto): the cluster notices the new
store generation, registers again by itself and pushes what it knows; the new root
restores those addresses, answers for the old services, and gives new services and
nodes addresses distinct from every old one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests
from csm_helpers import SimNode, service_payload

from testsupport import free_port, wait_until

pytestmark = [pytest.mark.system, pytest.mark.slow]

JOB_IDS = [f"6630f0f0f0f0f0f0f0f0f1{n:02x}" for n in range(3)]
NEW_IDS = [f"6630f0f0f0f0f0f0f0f0f2{n:02x}" for n in range(3)]


class Service:
    """One console script (gunicorn master and worker) in a process group of its own;
    only that group is ever signalled."""

    def __init__(self, name: str, env: dict[str, str], log_path) -> None:
        script = shutil.which(name, path=os.path.dirname(sys.executable))
        assert script, f"console script {name} is not installed"
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, **env}
        full_env.pop("MONGO_URL", None)
        self.process = subprocess.Popen(
            [script],
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)  # the group we created: master and worker
            self.process.wait(15)
        self.log.close()


def up(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:  # not listening yet, or still starting
        return False


@pytest.fixture
def services(tmp_path) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in reversed(started):
        service.stop(signal.SIGKILL)


@pytest.mark.parametrize("registered_by", ["itself", "system manager"])
def test_restarted_root_never_hands_out_an_address_in_use(
    tmp_path, mosquitto, services, registered_by
):
    root_port, cluster_port = free_port(), free_port()
    root_url = f"http://127.0.0.1:{root_port}"
    root_env = {
        "BIND": f"127.0.0.1:{root_port}",
        "JWT_GENERATOR_URL": "127.0.0.1",
        "JWT_GENERATOR_PORT": "9",
        "ROOT_REBUILD_MIN_SECONDS": "1",
        "ROOT_REBUILD_MAX_SECONDS": "30",
    }
    cluster_env = {
        "BIND": f"127.0.0.1:{cluster_port}",
        "MY_PORT": str(cluster_port),
        "ROOT_SERVICE_MANAGER_URL": "127.0.0.1",
        "ROOT_SERVICE_MANAGER_PORT": str(root_port),
        "MQTT_BROKER_URL": mosquitto.host,
        "MQTT_BROKER_PORT": str(mosquitto.port),
    }
    if registered_by == "itself":
        cluster_env.update(CLUSTER_ID="c1", CLUSTER_ADDRESS="127.0.0.1")
        cluster_env["CLUSTER_PORT"] = str(cluster_port)

    def start_root() -> Service:
        root = Service("root-service-manager", root_env, tmp_path / "root.log")
        services.append(root)
        wait_until(lambda: up(f"{root_url}/healthz"), timeout=20, message="root not up")
        return root

    def allocating() -> bool:
        return requests.get(f"{root_url}/healthz", timeout=2).json()["rebuilding"] is False

    root = start_root()
    services.append(Service("cluster-service-manager", cluster_env, tmp_path / "cluster.log"))
    wait_until(lambda: up(f"http://127.0.0.1:{cluster_port}/healthz"), timeout=20)
    if registered_by == "system manager":
        body = {"cluster_id": "c1", "cluster_address": "127.0.0.1", "cluster_port": cluster_port}
        assert requests.post(f"{root_url}/api/net/cluster", json=body, timeout=5).ok
        # the cluster learns how it is registered (to do the same with a new root)
        metrics = f"http://127.0.0.1:{cluster_port}/metrics"
        known = "oakestra_cluster_registration_known 1.0"
        wait_until(lambda: known in requests.get(metrics, timeout=5).text, timeout=10)
    wait_until(allocating, timeout=20, message="first root never left the rebuild")

    old: set[str] = set()
    for index, job_id in enumerate(JOB_IDS):
        rr_ip = "10.30.200.1" if index == 0 else None  # one user-chosen address too
        body = service_payload(job_id, f"S{index}", rr_ip)
        deployed = requests.post(f"{root_url}/api/net/service/deploy", json=body, timeout=5)
        assert deployed.status_code == 200, deployed.text
        for number in range(2):
            instance = {"_id": job_id, "instance_number": number, "cluster_id": "c1"}
            response = requests.post(f"{root_url}/api/net/instance/deploy", json=instance)
            assert response.status_code == 200, response.text
        # the cluster manager announces the deployment: the cluster caches the job
        job_name = f"X.default.S{index}.default"
        cached = requests.post(
            f"http://127.0.0.1:{cluster_port}/api/net/deployment",
            json={"job_name": job_name},
            timeout=10,
        )
        assert cached.status_code == 200, cached.text
        path = f"/api/net/service/{job_name.replace('.', '_')}/instances"
        old |= addresses_of(requests.get(f"{root_url}{path}", timeout=5).json())
    node = SimNode(mosquitto.host, mosquitto.port).start()
    try:
        old_subnet = node.request_subnet()["address"]
        assert len(old) == 3 * (4 + 4)

        root.stop(signal.SIGKILL)
        root = start_root()  # a fresh embedded store: it knows nothing
        wait_until(allocating, timeout=20, message="the cluster never rebuilt the new root")
        registered = requests.get(f"{root_url}/api/net/state", timeout=5).json()["cluster"]
        assert registered == {
            "cluster_id": "c1",
            "cluster_address": "127.0.0.1",
            "cluster_port": cluster_port,
        }, "the cluster registered again by itself"

        # the old services are known again, with their addresses
        for index, job_id in enumerate(JOB_IDS):
            job = requests.get(
                f"{root_url}/api/net/service/X_default_S{index}_default/instances"
            ).json()
            assert job["_id"] == job_id
            assert len(job["instance_list"]) == 2
        new: set[str] = set()
        for index, job_id in enumerate(NEW_IDS):
            body = service_payload(job_id, f"N{index}")
            response = requests.post(f"{root_url}/api/net/service/deploy", json=body, timeout=5)
            assert response.status_code == 200, response.text
            for number in range(2):
                instance = {"_id": job_id, "instance_number": number, "cluster_id": "c1"}
                requests.post(f"{root_url}/api/net/instance/deploy", json=instance, timeout=5)
            job = requests.get(f"{root_url}/api/net/service/X_default_N{index}_default/instances")
            new |= addresses_of(job.json())
        assert len(new) == 3 * (4 + 4)
        assert not new & old, f"addresses handed out twice: {sorted(new & old)}"
        fresh_node = SimNode(mosquitto.host, mosquitto.port).start()
        try:
            assert fresh_node.request_subnet(timeout=10)["address"] != old_subnet
        finally:
            fresh_node.stop()
        # the user-chosen address of an old service cannot be taken by a new one
        taken = requests.post(
            f"{root_url}/api/net/service/deploy",
            json=service_payload("6630f0f0f0f0f0f0f0f0f2ff", "T", "10.30.200.1"),
            timeout=5,
        )
        assert taken.status_code in (400, 409) and "10.30.200.1" in taken.json()["reason"]
    finally:
        node.stop()


def addresses_of(job: dict) -> set[str]:
    found = {e[k] for e in job["service_ip_list"] for k in ("Address", "Address_v6")}
    found |= {i[k] for i in job["instance_list"] for k in ("instance_ip", "instance_ip_v6")}
    return found
