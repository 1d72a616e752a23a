"""Bad input on every endpoint: a 4xx JSON answer with a reason, and unchanged state."""

from __future__ import annotations

import logging

import pytest
from rsm_payloads import X1_ID, X3_ID, register_cluster, service_payload

from oakestra_net import http_errors

STATE = ("jobs", "clusters", "ip_reservations", "outbox")
UNKNOWN_ID = "0123456789abcdef01234567"


def snapshot(root) -> dict:
    return {name: sorted(map(repr, root.db[name].find())) for name in STATE}


@pytest.fixture
def deployed(client):
    register_cluster(client)
    client.post("/api/net/service/deploy", json=service_payload(X1_ID, "X1", "10.30.0.1"))
    client.post(
        "/api/net/instance/deploy", json={"_id": X1_ID, "instance_number": 0, "cluster_id": "c1"}
    )
    return client


def descriptor(**changes) -> dict:
    payload = service_payload(X3_ID, "X3")
    payload["deployment_descriptor"].update(changes)
    return payload


BAD_REQUESTS = [
    # (method, path, json or raw body, expected status)
    ("post", "/api/net/cluster", "not json", 400),
    ("post", "/api/net/cluster", [1, 2], 400),
    ("post", "/api/net/cluster", {"cluster_address": "192.0.2.1", "cluster_port": 1}, 400),
    (
        "post",
        "/api/net/cluster",
        {"cluster_id": "c9", "cluster_address": "x", "cluster_port": "p"},
        400,
    ),
    ("post", "/api/net/cluster", {"cluster_id": 5, "cluster_address": "x", "cluster_port": 1}, 400),
    (
        "post",
        "/api/net/cluster",
        {"cluster_id": "c9", "cluster_address": "x", "cluster_port": 70000},
        400,
    ),
    ("post", "/api/net/service/deploy", "{", 400),
    ("post", "/api/net/service/deploy", {"deployment_descriptor": {}}, 400),
    ("post", "/api/net/service/deploy", {"_id": "nope", "deployment_descriptor": {}}, 400),
    ("post", "/api/net/service/deploy", {"_id": X3_ID, "deployment_descriptor": "x"}, 400),
    ("post", "/api/net/service/deploy", descriptor(app_name="bad-name"), 400),
    ("post", "/api/net/service/deploy", descriptor(app_name="a" * 31), 400),
    ("post", "/api/net/service/deploy", descriptor(app_ns=None), 400),
    (
        "post",
        "/api/net/service/deploy",
        descriptor(service_name="X_3", microservice_name="X_3"),
        400,
    ),
    ("post", "/api/net/service/deploy", descriptor(RR_ip="10.20.0.1"), 400),
    ("post", "/api/net/service/deploy", descriptor(RR_ip="10.30.1.999"), 400),
    ("post", "/api/net/service/deploy", descriptor(RR_ip="10.30.0.1"), 400),  # X1's
    ("post", "/api/net/service/deploy", descriptor(RR_ip=12), 400),
    ("post", "/api/net/service/deploy", descriptor(RR_ip_v6="fdff:1000::1"), 400),
    ("post", "/api/net/service/deploy", descriptor(RR_ip_v6="2001:db8::1"), 400),
    ("post", "/api/net/service/deploy", descriptor(addresses={"closest_ip": "10.30.0.1"}), 400),
    (
        "post",
        "/api/net/service/deploy",
        descriptor(RR_ip="10.30.5.5", addresses={"rr_ip": "10.30.5.6"}),
        400,
    ),
    ("post", "/api/net/service/deploy", service_payload(X1_ID, "Other"), 409),
    (
        "post",
        "/api/net/instance/deploy",
        {"_id": X1_ID, "instance_number": "x", "cluster_id": "c1"},
        400,
    ),
    (
        "post",
        "/api/net/instance/deploy",
        {"_id": X1_ID, "instance_number": -2, "cluster_id": "c1"},
        400,
    ),
    (
        "post",
        "/api/net/instance/deploy",
        {"_id": X1_ID, "instance_number": True, "cluster_id": "c1"},
        400,
    ),
    ("post", "/api/net/instance/deploy", {"_id": X1_ID, "instance_number": 1}, 400),
    (
        "post",
        "/api/net/instance/deploy",
        {"_id": UNKNOWN_ID, "instance_number": 1, "cluster_id": "c1"},
        404,
    ),
    ("post", "/api/net/service/net_deploy_status", {"job_id": X1_ID}, 400),
    ("post", "/api/net/service/net_deploy_status", {"job_id": X1_ID, "instances": []}, 400),
    (
        "post",
        "/api/net/service/net_deploy_status",
        {
            "job_id": X1_ID,
            "instances": [
                {
                    "instance_number": 0,
                    "namespace_ip": "fc00::2",
                    "namespace_ip_v6": "fc00::2",
                    "host_ip": "198.18.0.1",
                    "host_port": 50103,
                }
            ],
        },
        400,
    ),
    (
        "post",
        "/api/net/service/net_deploy_status",
        {
            "job_id": X1_ID,
            "instances": [
                {
                    "instance_number": 0,
                    "namespace_ip": 5,
                    "namespace_ip_v6": "fc00::2",
                    "host_ip": "198.18.0.1",
                    "host_port": 50103,
                }
            ],
        },
        400,
    ),
    (
        "post",
        "/api/net/service/net_deploy_status",
        {
            "job_id": X1_ID,
            "instances": [
                {
                    "instance_number": 0,
                    "namespace_ip": "10.16.0.2",
                    "namespace_ip_v6": "fc00::2",
                    "host_ip": "198.18.0.1",
                    "host_port": "port",
                }
            ],
        },
        400,
    ),
    (
        "post",
        "/api/net/service/net_deploy_status",
        {
            "job_id": UNKNOWN_ID,
            "instances": [
                {
                    "instance_number": 0,
                    "namespace_ip": "10.16.0.2",
                    "namespace_ip_v6": "fc00::2",
                    "host_ip": "198.18.0.1",
                    "host_port": 50103,
                }
            ],
        },
        404,
    ),
    ("delete", f"/api/net/{X1_ID}/abc", None, 400),
    ("delete", f"/api/net/{X1_ID}/-2", None, 400),
    ("delete", f"/api/net/{UNKNOWN_ID}/0", None, 404),
    ("delete", "/api/net/not-an-id/0", None, 400),
    ("delete", f"/api/net/service/{UNKNOWN_ID}", None, 404),
    ("delete", "/api/net/service/xyz", None, 400),
    ("delete", f"/api/net/service/{X1_ID}", None, 400),  # still has an instance
    ("get", "/api/net/service/X_default_Nope_default/instances", None, 404),
    ("get", "/api/net/service/ip/10_30_77_77/instances", None, 404),
    ("get", "/api/net/service/ip/not_an_ip/instances", None, 400),
    ("get", "/api/net/no/such/route", None, 404),
    ("put", "/api/net/cluster", {}, 405),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), BAD_REQUESTS)
def test_bad_request_is_refused_and_changes_nothing(deployed, root, method, path, body, status):
    before = snapshot(root)
    call = getattr(deployed, method)
    if isinstance(body, str):
        response = call(path, data=body, content_type="application/json")
    else:
        response = call(path, json=body)
    assert response.status_code == status, response.get_data(as_text=True)
    answer = response.get_json()
    assert isinstance(answer, dict) and answer["reason"], answer
    assert snapshot(root) == before


def nested(depth: int, leaf: object = 1) -> object:
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


def deep_text(depth: int) -> str:
    return '{"cluster_id": ' + "[" * depth + "]" * depth + "}"


OTHER_ID = "6630f0f0f0f0f0f0f0f0f0aa"
PLACED = {
    "instance_number": 0,
    "namespace_ip": "10.16.0.2",
    "namespace_ip_v6": "fc00::2",
    "host_ip": "198.18.0.1",
    "host_port": 50103,
}

# (method, path, json or raw body, expected status, the field the answer must name)
FIELD_ERRORS = [
    ("post", "/api/net/cluster", deep_text(100_000), 400, ""),
    ("post", "/api/net/service/deploy", deep_text(100_000), 400, ""),
    (
        "post",
        "/api/net/service/deploy",
        descriptor(extra=nested(500)),
        400,
        "deployment_descriptor.extra",
    ),
    (
        "post",
        "/api/net/cluster",
        {"cluster_id": "c9", "cluster_address": "192.0.2.9", "cluster_port": "--1"},
        400,
        "cluster_port",
    ),
    (
        "post",
        "/api/net/cluster",
        {"cluster_id": "c9", "cluster_address": "192.0.2.9", "cluster_port": "١٠١١٠"},
        400,
        "cluster_port",
    ),
    (
        "post",
        "/api/net/cluster",
        {"cluster_id": "c9", "cluster_address": "192.0.2.9", "cluster_port": "9" * 5000},
        400,
        "cluster_port",
    ),
    (
        "post",
        "/api/net/cluster",
        {"cluster_id": "c9", "cluster_address": "not-an-address", "cluster_port": 10110},
        400,
        "cluster_address",
    ),
    (
        "post",
        "/api/net/service/deploy",
        {"deployment_descriptor": descriptor()["deployment_descriptor"]},
        400,
        "_id",
    ),
    (
        "post",
        "/api/net/instance/deploy",
        {"_id": X1_ID, "instance_number": 2**70, "cluster_id": "c1"},
        400,
        "instance_number",
    ),
    (
        "post",
        "/api/net/instance/deploy",
        {"_id": X1_ID, "instance_number": "٥", "cluster_id": "c1"},
        400,
        "instance_number",
    ),
    (
        "post",
        "/api/net/service/net_deploy_status",
        {"job_id": X1_ID, "instances": [{**PLACED, "host_ip": "somewhere"}]},
        400,
        "instances[0].host_ip",
    ),
    (
        "post",
        "/api/net/service/net_deploy_status",
        {"job_id": X1_ID, "instances": [{**PLACED, "host_port": "--1"}]},
        400,
        "instances[0].host_port",
    ),
    ("delete", f"/api/net/{X1_ID}/٠", None, 400, "instance_number"),
    ("delete", f"/api/net/{X1_ID}/{'9' * 5000}", None, 400, "instance_number"),
    ("delete", f"/api/net/{X1_ID}/99999999999", None, 400, "instance_number"),
    ("delete", f"/api/net/{X1_ID}/ 0", None, 400, "instance_number"),
    ("delete", "/api/net/service/abcdefghijkl", None, 400, "job_id"),  # 12 bytes: not an id
    ("get", f"/api/net/service/ip/{'1' * 5000}/instances", None, 400, "service_ip"),
    (
        "post",
        "/api/net/service/deploy",
        service_payload(X1_ID, "X1", "10.30.0.9"),
        409,
        None,
    ),
    ("delete", "/api/net/subnet", {"subnet_addr": "10.18.0.64"}, 404, None),
    ("delete", "/api/net/subnet", {"subnet_addr": "8.8.8.0"}, 404, None),
    ("delete", "/api/net/subnet", {"subnet_addr_v6": "2001:db8::"}, 404, None),
    ("delete", "/api/net/subnet", {"subnet_addr": "10.30.0.1"}, 404, None),  # X1's RR IP
    ("delete", "/api/net/subnet", {}, 400, ""),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), FIELD_ERRORS)
def test_bad_input_is_a_json_4xx_naming_the_field(
    deployed, root, method, path, body, status, field
):
    before = snapshot(root)
    call = getattr(deployed, method)
    if isinstance(body, str):
        response = call(path, data=body, content_type="application/json")
    else:
        response = call(path, json=body)
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    answer = response.get_json()
    assert answer["reason"], answer
    if field is not None:
        assert answer["field"].startswith(field) if field else answer["field"] == "", answer
    assert snapshot(root) == before


def test_a_subnet_of_another_cluster_is_not_released(deployed, app, root):
    subnet = deployed.get("/api/net/subnet").get_json()
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "192.0.2.20"
    register_cluster(other, "c2", "192.0.2.20")
    before = snapshot(root)
    answer = other.delete("/api/net/subnet", json={"subnet_addr": subnet["subnet_addr"]})
    assert answer.status_code == 404 and "another cluster" in answer.get_json()["reason"]
    assert snapshot(root) == before
    mine = deployed.delete("/api/net/subnet", json=subnet)
    assert mine.status_code == 200
    assert mine.get_json()["released"] == {"subnet_addr": True, "subnet_addr_v6": True}


def test_a_redeploy_asking_for_another_rr_ip_is_refused_with_the_reason(deployed):
    answer = deployed.post(
        "/api/net/service/deploy", json=service_payload(X1_ID, "X1", "10.30.0.9")
    )
    assert answer.status_code == 409
    assert "10.30.0.9" in answer.get_json()["reason"] and "10.30.0.1" in answer.get_json()["reason"]
    same = deployed.post("/api/net/service/deploy", json=service_payload(X1_ID, "X1", "10.30.0.1"))
    assert same.status_code == 200
    unpinned = deployed.post("/api/net/service/deploy", json=service_payload(X1_ID, "X1"))
    assert unpinned.status_code == 200


def test_a_unicode_digit_never_removes_an_instance(deployed, root):
    deployed.post(
        "/api/net/instance/deploy", json={"_id": X1_ID, "instance_number": 5, "cluster_id": "c1"}
    )
    answer = deployed.delete(f"/api/net/{X1_ID}/٥")
    assert answer.status_code == 400 and answer.get_json()["field"] == "instance_number"
    job = root.db["jobs"].find_one({"job_name": "X.default.X1.default"})
    assert sorted(i["instance_number"] for i in job["instance_list"]) == [0, 5]


def test_rejected_requests_are_logged_at_a_bounded_rate(deployed, caplog):
    caplog.set_level(logging.INFO)
    http_errors.rejections.flush()  # start a fresh window for every key
    caplog.clear()
    for n in range(200):
        deployed.post("/api/net/cluster", json={"cluster_id": f"c{n}", "cluster_port": "--1"})
    http_errors.rejections.flush()
    lines = [r for r in caplog.records if r.getMessage().startswith("request rejected")]
    assert len(lines) == http_errors.rejections.burst + 1
    assert lines[0].fields["reason"].startswith("field 'cluster_address'")
    assert lines[-1].fields["suppressed"] == 200 - http_errors.rejections.burst
