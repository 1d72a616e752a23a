"""What the cluster believes and whom it obeys: placements, retained results, the API token."""

from __future__ import annotations

import logging

import pytest
import requests
from csm_helpers import X3, X3_ID, LiveServer, RootHarness, make_settings

from cluster_service_manager.app import create_app
from cluster_service_manager.config import ConfigError, Settings
from oakestra_net import store
from oakestra_net.mqtt import MqttClient, MqttConfig
from root_service_manager.app import create_app as create_root_app
from root_service_manager.jwt_keys import KeyProvider
from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("fail_on_log_exception")

NODE_A = "6630a0a0a0a0a0a0a0a0a0a0"
NODE_B = "6630b0b0b0b0b0b0b0b0b0b0"
TOKEN = "cluster-test-token-0123456789"
REFUSED = "report from a node the instance is not scheduled on refused"


def schedule(cluster, number: int, node_id: str):
    body = {"job_name": X3, "instance_number": number, "worker_id": node_id}
    return cluster.client.post("/api/net/deployment", json=body)


def refusals(caplog) -> list[dict]:
    return [r.fields for r in caplog.get_records("call") if r.getMessage() == REFUSED]


# -- reports are checked against the orchestrator's placement --------------------------


def test_a_node_cannot_report_an_instance_scheduled_on_another(
    root_server, cluster, make_node, caplog
):
    root_server.deploy_service(X3_ID, "X3", "10.30.1.30")
    root_server.deploy_instance(X3_ID, 0)
    assert schedule(cluster, 0, NODE_A).status_code == 200
    a, b = make_node(NODE_A), make_node(NODE_B)
    b.deployed(X3, 0, "10.16.0.130", "fc00::202", "203.0.113.66", 50103)  # B lies
    first = wait_until(lambda: refusals(caplog))[0]
    assert (first["node_id"], first["scheduled_node_id"]) == (NODE_B, NODE_A)
    assert cluster.job(X3)["instance_list"][0].get("worker_id") is None
    a.deployed(X3, 0, "10.16.0.2", "fc00::2", "192.0.2.1", 50103)
    wait_until(lambda: root_server.instance(X3, 0).get("namespace_ip") == "10.16.0.2")
    b.undeployed(X3, 0)  # B cannot clear it either
    b.address_changed(X3, 0, "203.0.113.66", 50103)  # nor move it
    wait_until(lambda: len(refusals(caplog)) == 3)
    cluster.idle()
    assert root_server.instance(X3, 0)["host_ip"] == "192.0.2.1"
    assert a.query(sname=X3)["instance_list"][0]["worker_id"] == NODE_A
    metrics = cluster.client.get("/metrics").get_data(as_text=True)
    assert 'kind="service/deployed",outcome="refused"} 1.0' in metrics


def test_a_rescheduled_instance_takes_reports_from_its_new_node(
    root_server, cluster, make_node, caplog
):
    root_server.deploy_service(X3_ID, "X3", "10.30.1.30")
    root_server.deploy_instance(X3_ID, 0)
    schedule(cluster, 0, NODE_A)
    assert schedule(cluster, 0, NODE_B).status_code == 200  # the orchestrator moved it
    b = make_node(NODE_B)
    b.deployed(X3, 0, "10.16.0.130", "fc00::202", "192.0.2.2", 50103)
    wait_until(lambda: root_server.instance(X3, 0).get("namespace_ip") == "10.16.0.130")
    assert not refusals(caplog)


def test_the_root_undeploying_an_instance_forgets_its_placement(root_server, cluster):
    root_server.deploy_service(X3_ID, "X3", "10.30.1.30")
    root_server.deploy_instance(X3_ID, 0)
    schedule(cluster, 0, NODE_A)
    assert cluster.cache.scheduled_node(X3, 0) == NODE_A
    body = {"job_name": X3, "instance_number": 0, "type": "UNDEPLOYMENT"}
    assert cluster.client.post("/api/net/job/update", json=body).status_code == 200
    wait_until(lambda: cluster.cache.scheduled_node(X3, 0) is None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"instance_number": 0}, "'worker_id'"),
        ({"worker_id": NODE_A}, "'instance_number'"),
        ({"instance_number": -1, "worker_id": NODE_A}, "'instance_number'"),
        ({"instance_number": True, "worker_id": NODE_A}, "'instance_number'"),
        ({"instance_number": 0, "worker_id": "a/b"}, "'worker_id'"),
        ({"instance_number": 0, "worker_id": 7}, "'worker_id'"),
    ],
)
def test_a_bad_placement_is_refused_naming_the_field(cluster, body, field):
    answer = cluster.client.post("/api/net/deployment", json={"job_name": X3, **body})
    assert answer.status_code == 400
    assert field in answer.get_json()["reason"]


# -- nothing the cluster publishes is retained -------------------------------------------


def test_the_cluster_never_publishes_retained_results(root_server, cluster, make_node, mosquitto):
    make_node(NODE_A).request_subnet()
    late = MqttClient(MqttConfig(mosquitto.host, mosquitto.port, "late-reader"), workers=1)
    seen: list[str] = []
    late.subscribe("nodes/#", lambda topic, _p: seen.append(topic), accept_retained=True)
    late.start()
    try:
        assert late.wait_subscribed("nodes/#", 5)
        probe = MqttClient(MqttConfig(mosquitto.host, mosquitto.port, "probe"), workers=1)
        probe.start()
        probe.publish("nodes/marker/net/interest/remove", '{"appname": "A.b.c.d"}')
        wait_until(lambda: seen)
        probe.stop()
        assert seen[0] == "nodes/marker/net/interest/remove", seen  # no retained result first
    finally:
        late.stop()


# -- the API token ------------------------------------------------------------------------


@pytest.fixture
def guarded_root():
    app = create_root_app(
        {"DB": store.connect("root", env={}), "KEYS": KeyProvider(), "API_TOKEN": TOKEN}
    )
    server = LiveServer(app).start()
    try:
        yield RootHarness(app, server)
    finally:
        server.stop()
        app.extensions["root"].outbox.stop()


@pytest.fixture
def guarded_cluster(mosquitto, guarded_root, db):
    settings = make_settings(mosquitto, guarded_root.url, api_token=TOKEN)
    app = create_app({"DB": db, "SETTINGS": settings})
    server = LiveServer(app).start()
    body = {"cluster_id": "c1", "cluster_address": "127.0.0.1", "cluster_port": server.port}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    registered = requests.post(
        f"{guarded_root.url}/api/net/cluster", json=body, headers=headers, timeout=5
    )
    assert registered.status_code == 200
    try:
        yield app, server
    finally:
        server.stop()
        app.extensions["cluster_service_manager"].stop()


def test_an_unauthenticated_job_update_is_refused(guarded_root, guarded_cluster):
    app, server = guarded_cluster
    headers = {"Authorization": f"Bearer {TOKEN}"}
    root = requests.Session()
    root.headers.update(headers)
    deploy = {"_id": X3_ID, "deployment_descriptor": _descriptor()}
    assert root.post(f"{guarded_root.url}/api/net/service/deploy", json=deploy).ok
    instance = {"_id": X3_ID, "instance_number": 0, "cluster_id": "c1"}
    assert root.post(f"{guarded_root.url}/api/net/instance/deploy", json=instance).ok
    # the cluster fetches the job from the guarded root: its root client sends the token
    stored = requests.post(
        f"{server.url}/api/net/deployment", json={"job_name": X3}, headers=headers, timeout=5
    )
    assert stored.status_code == 200, stored.text
    cache = app.extensions["cluster_service_manager"].cache

    update = {"job_name": X3, "instance_number": 0, "type": "UNDEPLOYMENT"}
    blackhole = requests.post(f"{server.url}/api/net/job/update", json=update, timeout=5)
    assert blackhole.status_code == 401
    assert blackhole.json()["error"] == "Unauthorized"
    forged = requests.post(
        f"{server.url}/api/net/job/update",
        json=update,
        headers={"Authorization": "Bearer not-the-token-at-all"},
        timeout=5,
    )
    assert forged.status_code == 403
    assert len(cache.get(X3).instances) == 1

    # the root's own push carries the token and is obeyed (the instance was never placed,
    # so no node's answer changes and nothing is announced: the cache shows the push)
    assert root.delete(f"{guarded_root.url}/api/net/{X3_ID}/0").ok
    wait_until(lambda: not (job := cache.get(X3)) or not job.instances)


def test_an_open_cluster_warns_loudly(mosquitto, root_server, db, caplog):
    with caplog.at_level(logging.WARNING):
        app = create_app({"DB": db, "SETTINGS": make_settings(mosquitto, root_server.url)})
    try:
        assert any("API OPEN" in r.getMessage() for r in caplog.records)
        body = {"job_name": X3, "instance_number": 0, "type": "UNDEPLOYMENT"}
        assert app.test_client().post("/api/net/job/update", json=body).status_code == 200
    finally:
        app.extensions["cluster_service_manager"].stop()


def _descriptor() -> dict:
    return {
        "app_name": "X",
        "app_ns": "default",
        "service_name": "X3",
        "service_ns": "default",
        "microservice_name": "X3",
        "microservice_namespace": "default",
        "RR_ip": "10.30.1.30",
    }


def test_the_token_is_read_checked_and_never_shown():
    assert Settings.from_env({"NET_API_TOKEN": TOKEN}).api_token == TOKEN
    assert TOKEN not in repr(Settings.from_env({"NET_API_TOKEN": TOKEN}))
    assert Settings.from_env({}).api_token is None
    with pytest.raises(ConfigError, match=r"NET_API_TOKEN=\*\*\* must be at least 16"):
        Settings.from_env({"NET_API_TOKEN": "short"})
