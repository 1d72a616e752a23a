"""Slow or idle HTTP clients cannot starve the others: the served cluster keeps answering."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from testsupport import SlowClients, free_port, wait_until

pytestmark = pytest.mark.system

COMMAND = str(Path(sys.executable).with_name("cluster-service-manager"))


@pytest.fixture
def served_cluster(mosquitto, root_server, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if "MONGO" not in k}
    env.update(
        MY_PORT=str(port),
        BIND=f"127.0.0.1:{port}",
        MQTT_BROKER_URL=mosquitto.host,
        MQTT_BROKER_PORT=str(mosquitto.port),
        ROOT_SERVICE_MANAGER_URL="127.0.0.1",
        ROOT_SERVICE_MANAGER_PORT=str(root_server.server.port),
    )
    with open(tmp_path / "csm.log", "wb") as log:
        process = subprocess.Popen([COMMAND], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: _status(url) == 200, timeout=20, message="cluster not healthy")
        yield port
    finally:
        process.terminate()  # our own child, by its pid
        process.wait(timeout=15)


def _status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=1).status_code
    except requests.RequestException:
        return None


def test_fifty_slow_clients_do_not_block_healthz(served_cluster):
    url = f"http://127.0.0.1:{served_cluster}/healthz"
    with SlowClients("127.0.0.1", served_cluster, 50) as slow:
        for _ in range(3):
            started = time.monotonic()
            assert requests.get(url, timeout=10).status_code == 200
            assert time.monotonic() - started < 3
        wait_until(lambda: slow.open_count() == 0, timeout=60, message="slow clients kept")
    answer = requests.post(f"http://127.0.0.1:{served_cluster}/api/net/deployment", data=b"{" * 50)
    assert answer.status_code == 400 and answer.json()["reason"]
