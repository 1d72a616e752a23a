"""The `cluster-service-manager` command: gunicorn, one worker, MQTT in the worker only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from oakestra_net.testing import free_port, wait_until

pytestmark = pytest.mark.process  # real broker / server / subprocess

COMMAND = str(Path(sys.executable).with_name("cluster-service-manager"))


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if "MONGO" not in k}
    env.update(LOG_FORMAT="json", **extra)
    return env


def test_bad_configuration_exits_at_once():
    result = subprocess.run(
        [COMMAND], env=_env(MY_PORT="http"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "bad configuration" in result.stderr and "MY_PORT" in result.stderr


def test_serves_with_one_worker_and_registers_itself(mosquitto, root_server, make_node, tmp_path):
    port = free_port()
    env = _env(
        MY_PORT=str(port),
        BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS="3",  # ignored: the embedded store allows one worker only
        MQTT_BROKER_URL=mosquitto.host,
        MQTT_BROKER_PORT=str(mosquitto.port),
        ROOT_SERVICE_MANAGER_URL="127.0.0.1",
        ROOT_SERVICE_MANAGER_PORT=str(root_server.server.port),
        CLUSTER_ID="standalone",
        CLUSTER_ADDRESS="127.0.0.1",
    )
    with open(tmp_path / "csm.log", "wb") as log:
        process = subprocess.Popen([COMMAND], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: _status(url) == 200, timeout=20, message="not healthy")
        assert requests.get(url, timeout=2).json()["broker"] == "connected"
        registered = wait_until(lambda: root_server.state.clusters.by_id("standalone"))
        assert (registered["cluster_address"], registered["cluster_port"]) == ("127.0.0.1", port)
        assert make_node().request_subnet(timeout=10)["address"]
        wait_until(lambda: "as cluster-service-manager-" in mosquitto.log_text())
        connections = mosquitto.log_text().count("as cluster-service-manager-")
        assert connections == 1, mosquitto.log_text()
        assert len(_children(process.pid)) == 1
    finally:
        process.send_signal(signal.SIGTERM)  # our own child, by its pid
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    output = (tmp_path / "csm.log").read_text()
    assert process.returncode == 0, output
    assert "mqtt stopped" in output, output  # the worker disconnected cleanly


def _status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=1).status_code
    except requests.RequestException:
        return None


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]
