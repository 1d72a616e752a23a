"""testcontainers against the tier's own engine: the root on a MongoDB that goes away.

testcontainers starts the MongoDB stand-in in the namespace-local engine (DOCKER_HOST
is that engine; Ryuk is off because its image cannot be pulled, the fixture removes
the container itself). The root service manager of this checkout runs as a process in
the engine's namespace, where the container's port is published, and a user sees: the
store is MongoDB; while MongoDB is stopped /healthz answers 503 and the API a 5xx JSON
error, never a crash; once MongoDB is back, so is the root, with its data.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from bson import ObjectId

from testbed.nsnet import NetnsSockets, http_call
from testbed.orchestrator import deployment_descriptor
from testbed.processes import Process, child_env

pytestmark = [pytest.mark.compose, pytest.mark.slow]

MONGO_PORT = 27017
ROOT_PORT = 10099
CLUSTER_ID = "6630c0000000000000000002"


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


@pytest.fixture
def mongo_container(docker_engine, standins, monkeypatch):
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_engine.config_dir))
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)
    container = DockerContainer(standins.mongo)
    container.with_command(f"mongod --port {MONGO_PORT} --bind_ip_all")
    # a fixed port (the engine's namespace is ours): a restart keeps the root's URL valid
    container.with_bind_ports(MONGO_PORT, MONGO_PORT)
    container.start()
    try:
        yield container
    finally:
        container.stop()  # stops and removes it with its anonymous volumes


@pytest.fixture
def engine_net(docker_engine):
    sockets = NetnsSockets(f"/run/netns/{docker_engine.netns}")
    yield sockets
    sockets.close()


def test_root_rides_out_a_mongodb_outage(docker_engine, mongo_container, engine_net, tmp_path):
    url = f"mongodb://127.0.0.1:{MONGO_PORT}/?directConnection=true"
    env = {"MY_PORT": str(ROOT_PORT), "MONGO_URL": url}
    program = Path(sys.executable).with_name("root-service-manager")  # this virtualenv's
    assert program.exists(), f"{program} is not installed"
    argv = [str(program)]
    root = Process("root", docker_engine.netns, argv, tmp_path / "root.log", child_env(env))
    root.start()
    try:
        healthz = f"http://127.0.0.1:{ROOT_PORT}/healthz"
        reply = wait_until(
            lambda: (r := http_call(engine_net, "GET", healthz, timeout=3)).status == 200 and r,
            30,
            "root healthy",
        )
        assert reply.body["store"] == "mongodb", reply.body
        api = f"http://127.0.0.1:{ROOT_PORT}/api/net"
        body = {"cluster_id": CLUSTER_ID, "cluster_address": "127.0.0.1", "cluster_port": "10110"}
        reply = http_call(engine_net, "POST", f"{api}/cluster", body)
        assert reply.status == 200, reply.body
        job_id = str(ObjectId())
        descriptor = deployment_descriptor("tcapp", "db", job_id, str(ObjectId()), None)
        body = {"deployment_descriptor": descriptor, "_id": job_id}
        reply = http_call(engine_net, "POST", f"{api}/service/deploy", body)
        assert reply.status == 200, reply.body

        mongo_container.get_wrapped_container().stop(timeout=5)
        down = wait_until(
            lambda: (r := http_call(engine_net, "GET", healthz, timeout=15)).status == 503 and r,
            60,
            "root reports the store down",
        )
        assert down.body["status"] != "ok", down.body
        root.check_alive()

        mongo_container.get_wrapped_container().start()
        wait_until(
            lambda: http_call(engine_net, "GET", healthz, timeout=10).status == 200,
            60,
            "root healthy again",
        )
        # the data written before the outage is still there: the service can be scheduled
        body = {"instance_number": 0, "cluster_id": CLUSTER_ID, "_id": job_id}
        reply = http_call(engine_net, "POST", f"{api}/instance/deploy", body)
        assert reply.status == 200, reply.body
        assert reply.body["instance"]["instance_ip"], reply.body
        root.check_alive()
    finally:
        root.stop()
