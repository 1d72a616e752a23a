"""Bad input on every endpoint: a 4xx JSON answer with a reason, and unchanged state."""

from __future__ import annotations

import pytest
from rsm_payloads import X1_ID, X3_ID, register_cluster, service_payload

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
