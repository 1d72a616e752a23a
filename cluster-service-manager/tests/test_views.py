"""The HTTP API: deployments from the cluster manager, root updates, health and metrics."""

from __future__ import annotations

import pytest
from csm_helpers import X3, X3_ID, make_settings

from cluster_service_manager.app import create_app
from oakestra_net import store
from testsupport import free_port, wait_until

pytestmark = pytest.mark.usefixtures("fail_on_log_exception")


@pytest.fixture
def offline_app(mosquitto, db):
    """A cluster service manager whose root is not reachable and which is not on MQTT."""
    settings = make_settings(mosquitto, f"http://127.0.0.1:{free_port()}", root_attempts=1)
    app = create_app({"DB": db, "SETTINGS": settings, "MQTT_AUTOSTART": False})
    yield app
    app.extensions["cluster_service_manager"].stop()


def deploy_x3(root, instances: int = 1) -> None:
    root.deploy_service(X3_ID, "X3", "10.30.1.30")
    for n in range(instances):
        root.deploy_instance(X3_ID, n)


def locate_at_root(root, number: int) -> None:
    """The root learns where instance `number` of X3 runs (as from another cluster)."""
    location = {"namespace_ip": "10.18.0.2", "namespace_ip_v6": "fc00::2"}
    location.update(host_ip="192.0.2.7", host_port=50103, instance_number=number)
    body = {"job_id": X3_ID, "instances": [location]}
    root._call("POST", "/api/net/service/net_deploy_status", json=body)


BAD_BODIES = [
    (b"not json", "JSON object"),
    (b"[1]", "JSON object"),
    (b"{}", "job_name"),
    (b'{"job_name": 5}', "must be a string"),
    (b'{"job_name": "X.default.X3"}', "4 dot-separated parts"),
    (b'{"job_name": "X.def-ault.X3.default"}', "letters or digits"),
]


@pytest.mark.parametrize(("body", "reason"), BAD_BODIES)
def test_deployment_bad_input_is_400(offline_app, body, reason):
    answer = offline_app.test_client().post("/api/net/deployment", data=body)
    assert answer.status_code == 400
    assert reason in answer.get_json()["reason"]


UPDATES = [
    ({"instance_number": 0, "type": "DEPLOYMENT"}, "job_name"),
    ({"job_name": X3, "type": "DEPLOYMENT"}, "Invalid instancenum"),
    ({"job_name": X3, "instance_number": "0", "type": "DEPLOYMENT"}, "Invalid instancenum"),
    ({"job_name": X3, "instance_number": -2, "type": "DEPLOYMENT"}, "Invalid instancenum"),
    ({"job_name": X3, "instance_number": True, "type": "DEPLOYMENT"}, "Invalid instancenum"),
    ({"job_name": X3, "instance_number": 0}, "Invalid type"),
    ({"job_name": X3, "instance_number": 0, "type": "deploy"}, "Invalid type"),
]


@pytest.mark.parametrize(("body", "reason"), UPDATES)
def test_job_update_bad_input_is_400(offline_app, body, reason):
    answer = offline_app.test_client().post("/api/net/job/update", json=body)
    assert answer.status_code == 400
    assert reason in answer.get_json()["reason"]


FIELD_ERRORS = [
    ("/api/net/deployment", b'{"job_name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", ""),
    ("/api/net/job/update", b'{"x": ' + b'{"a": ' * 200 + b"1" + b"}" * 201, "x.a.a"),
    ("/api/net/deployment", b'{"job_name": "X.default.X3.default\\ud800"}', "job_name"),
    ("/api/net/job/update", f'{{"job_name": "{X3}", "instance_number": {2**70}}}'.encode(), None),
    (
        "/api/net/job/update",
        f'{{"job_name": "{X3}", "instance_number": "٥", "type": "DEPLOYMENT"}}'.encode(),
        "instance_number",
    ),
]


@pytest.mark.parametrize(("path", "body", "field"), FIELD_ERRORS)
def test_bad_input_names_the_field(offline_app, path, body, field):
    answer = offline_app.test_client().post(path, data=body)
    assert answer.status_code == 400, answer.get_data(as_text=True)[:300]
    if field is None:
        field = "instance_number"
    assert answer.get_json()["field"].startswith(field), answer.get_json()


def test_root_down_is_503_and_unknown_routes_are_json(offline_app):
    client = offline_app.test_client()
    answer = client.post("/api/net/deployment", json={"job_name": X3})
    assert answer.status_code == 503
    assert "unavailable" in answer.get_json()["reason"]
    assert client.get("/api/net/nothing").get_json()["error"] == "Not Found"
    assert client.delete(f"/api/net/deployment/{X3}").status_code == 404
    assert client.delete("/api/net/deployment/bad_name").status_code == 400
    health = client.get("/healthz")
    assert health.status_code == 503 and health.get_json()["broker"] == "disconnected"


def test_deployment_caches_the_job_and_announces_it(root_server, cluster, mqtt_recorder):
    updates = mqtt_recorder(f"jobs/{X3}/updates_available")
    deploy_x3(root_server)
    answer = cluster.client.post("/api/net/deployment", json={"job_name": X3})
    assert answer.status_code == 200
    assert answer.get_json() == {
        "message": "job stored succesfully",
        "job_name": X3,
        "instances": 1,
    }
    assert cluster.job(X3)["job_id"] == X3_ID
    assert X3 in root_server.interests()
    assert updates.wait_for().payload == {"type": "DEPLOYMENT"}
    unknown = cluster.client.post("/api/net/deployment", json={"job_name": "A.b.c.d"})
    assert unknown.status_code == 404


def test_unregistered_cluster_is_502(root_server, make_cluster):
    cluster = make_cluster(register=False)
    deploy_x3(root_server)
    answer = cluster.client.post("/api/net/deployment", json={"job_name": X3})
    assert answer.status_code == 502
    assert "registered" in answer.get_json()["reason"]


def test_deployment_update_refreshes_from_the_root(root_server, cluster, mqtt_recorder):
    deploy_x3(root_server)
    cluster.client.post("/api/net/deployment", json={"job_name": X3})
    root_server.deploy_instance(X3_ID, 1)  # the root does not push new instances
    updates = mqtt_recorder(f"jobs/{X3}/updates_available")
    body = {"job_name": X3, "instance_number": 1, "type": "DEPLOYMENT"}
    answer = cluster.client.post("/api/net/job/update", json=body)
    assert answer.get_json() == {"message": "update notification received"}
    wait_until(lambda: len(cluster.job(X3)["instance_list"]) == 2)
    cluster.idle()
    assert updates.messages() == []  # nodes would see no difference: not announced
    locate_at_root(root_server, 1)  # pushes the located instance (the cluster is interested)
    assert updates.wait_for().payload == {"type": "DEPLOYMENT"}
    cluster.idle()
    assert len(updates.messages()) == 1  # one change, one announcement


def test_undeployment_update_removes_instances_and_forgets(root_server, cluster, mqtt_recorder):
    deploy_x3(root_server, instances=2)
    locate_at_root(root_server, 1)
    cluster.client.post("/api/net/deployment", json={"job_name": X3})
    cluster.idle()
    updates = mqtt_recorder(f"jobs/{X3}/updates_available")
    body = {"job_name": X3, "instance_number": 1, "type": "UNDEPLOYMENT"}
    cluster.client.post("/api/net/job/update", json=body)
    wait_until(lambda: len(cluster.job(X3)["instance_list"]) == 1)
    assert updates.wait_for().payload == {"type": "UNDEPLOYMENT"}
    cluster.client.post("/api/net/job/update", json={**body, "instance_number": -1})
    wait_until(lambda: cluster.job(X3) is None, message="unused job not forgotten")
    wait_until(lambda: X3 not in root_server.interests())


def test_a_service_removed_at_the_root_leaves_the_cache_of_interested_nodes(
    root_server, cluster, make_node, mqtt_recorder
):
    """A node still follows the job; the root removed the service and freed its service
    IPs: the cluster must not go on answering queries for those IPs from its cache."""
    deploy_x3(root_server, instances=1)
    node = make_node("6630a0a0a0a0a0a0a0a0a0a0")
    assert node.query(sname=X3)["app_name"] == X3  # the node is interested
    rr_ip = cluster.job(X3)["service_ip_list"][0]["Address"]
    root_server.undeploy_instance(X3_ID, -1)
    root_server._call("DELETE", f"/api/net/service/{X3_ID}")
    updates = mqtt_recorder(f"jobs/{X3}/updates_available")
    body = {"job_name": X3, "instance_number": -1, "type": "UNDEPLOYMENT"}
    assert cluster.client.post("/api/net/job/update", json=body).status_code == 200
    wait_until(lambda: cluster.job(X3) is None, message="removed job still cached")
    updates.wait_for(lambda m: m.payload == {"type": "UNDEPLOYMENT"})  # nodes refetch
    assert node.query(sip=rr_ip)["app_name"] is None
    cluster.idle()
    assert cluster.job(X3) is None, [m.payload for m in updates.messages()]


def test_a_service_scaled_to_zero_stays_cached_for_interested_nodes(
    root_server, cluster, make_node
):
    deploy_x3(root_server, instances=1)
    node = make_node("6630a0a0a0a0a0a0a0a0a0a0")
    assert node.query(sname=X3)["app_name"] == X3
    root_server.undeploy_instance(X3_ID, -1)
    body = {"job_name": X3, "instance_number": -1, "type": "UNDEPLOYMENT"}
    assert cluster.client.post("/api/net/job/update", json=body).status_code == 200
    cluster.idle()
    assert cluster.job(X3) is not None and cluster.job(X3)["instance_list"] == []


def test_update_for_a_job_not_cached_is_only_announced(cluster, mqtt_recorder):
    updates = mqtt_recorder("jobs/+/updates_available")
    body = {"job_name": "A.b.c.d", "instance_number": 0, "type": "DEPLOYMENT"}
    assert cluster.client.post("/api/net/job/update", json=body).status_code == 200
    assert updates.wait_for().topic == "jobs/A.b.c.d/updates_available"
    cluster.idle()
    assert cluster.job("A.b.c.d") is None


def test_remove_deployment(root_server, cluster, mqtt_recorder):
    deploy_x3(root_server)
    cluster.client.post("/api/net/deployment", json={"job_name": X3})
    updates = mqtt_recorder(f"jobs/{X3}/updates_available")
    answer = cluster.client.delete(f"/api/net/deployment/{X3.replace('.', '_')}")
    assert answer.status_code == 200 and cluster.job(X3) is None
    assert updates.wait_for().payload == {"type": "UNDEPLOYMENT"}


def test_health_and_metrics(cluster, make_node):
    health = cluster.client.get("/healthz")
    assert health.status_code == 200
    assert health.get_json() == {
        "status": "ok",
        "broker": "connected",
        "store": "embedded" if store.is_embedded(cluster.parts.db) else "mongodb",
        "pending_root_work": 0,
    }
    node = make_node()
    node.request_subnet()
    text = cluster.client.get("/metrics").get_data(as_text=True)
    assert 'oakestra_cluster_node_messages_total{kind="subnet",outcome="handled"} 1.0' in text
    assert 'oakestra_cluster_root_calls_total{call="subnet",outcome="ok"} 1.0' in text
    assert "oakestra_cluster_broker_connected 1.0" in text
