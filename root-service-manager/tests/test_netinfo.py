"""Public netinfo API: JWT checks, answers without node addresses, the available-IP preview."""

from __future__ import annotations

import re
import time

import jwt
import pytest
from rsm_payloads import X1_ID, register_cluster, service_payload

from root_service_manager.app import create_app
from root_service_manager.jwt_keys import KeyProvider


@pytest.fixture
def token(rsa_key):
    def make(**claims):
        return jwt.encode({"sub": "admin", "exp": time.time() + 60, **claims}, rsa_key, "RS256")

    return make


@pytest.fixture
def deployed(client):
    register_cluster(client)
    client.post("/api/net/service/deploy", json=service_payload(X1_ID, "X1", "10.30.0.1"))
    client.post(
        "/api/net/instance/deploy", json={"_id": X1_ID, "instance_number": 0, "cluster_id": "c1"}
    )
    return client


def test_netinfo_by_name_and_ip(deployed, token):
    headers = {"Authorization": f"Bearer {token()}"}
    by_name = deployed.get("/api/pubnet/service/netinfo/X_default_X1_default", headers=headers)
    assert by_name.status_code == 200
    info = by_name.get_json()
    assert info["service_job_id"] == X1_ID
    assert info["app_name"] == "X" and info["service_name"] == "X1"
    assert info["service_ip_list"][0] == {
        "Address": "10.30.0.1",
        "Address_v6": "fdff:2000::1",
        "IpType": "RR",
    }
    instance = info["instance_list"][0]
    assert set(instance) == {"cluster_id", "instance_number", "instance_ip", "instance_ip_v6"}
    by_ip = deployed.get("/api/pubnet/service/netinfo/ip/10_30_0_1", headers=headers)
    assert by_ip.get_json() == info
    missing = deployed.get("/api/pubnet/service/netinfo/X_default_No_default", headers=headers)
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "authorization",
    [None, "Token abc", "Bearer not-a-jwt"],
)
def test_bad_tokens_get_401_with_a_reason(deployed, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = deployed.get("/api/pubnet/service/netinfo/X_default_X1_default", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["reason"]


def test_expired_and_file_access_tokens_are_refused(deployed, token):
    for bad in (token(exp=time.time() - 10), token(file_access_token=True)):
        response = deployed.get(
            "/api/pubnet/service/netinfo/X_default_X1_default",
            headers={"Authorization": f"Bearer {bad}"},
        )
        assert response.status_code == 401


def test_available_ip_preview(deployed, token):
    headers = {"Authorization": f"Bearer {token()}"}
    both = deployed.get("/api/pubnet/service/netinfo/available-ip/2", headers=headers).get_json()
    ips = both["available_service_ips"]
    assert [i["IpType"] for i in ips] == ["IPv4", "IPv4", "IPv6", "IPv6"]
    assert all(i["Address_v6"].startswith("fdff:2") for i in ips[2:])  # valid as RR_ip_v6
    v4 = deployed.get("/api/pubnet/service/netinfo/available-ip/?v=4", headers=headers)
    assert len(v4.get_json()["available_service_ips"]) == 1
    bad = deployed.get("/api/pubnet/service/netinfo/available-ip/x", headers=headers)
    assert bad.status_code == 400


@pytest.mark.process  # connects to a port nothing listens on
def test_without_a_key_netinfo_answers_503_and_the_rest_works(db):
    keys = KeyProvider(generator_url="http://127.0.0.1:9/key", retry_interval=60)
    app = create_app({"DB": db, "KEYS": keys, "OUTBOX_AUTOSTART": False})
    client = app.test_client()
    response = client.get("/api/pubnet/service/netinfo/X_default_X1_default")
    assert response.status_code == 503
    assert "key" in response.get_json()["reason"]
    assert client.get("/api/net/subnet").status_code == 200


def test_openapi_and_docs(app, client):
    spec = client.get("/docs/openapi.json").get_json()
    assert "/api/pubnet/service/netinfo/{service_name}" in spec["paths"]
    assert client.get("/api/docs").status_code == 200
    for rule in app.url_map.iter_rules():  # every API route is documented
        if rule.rule.startswith("/api/") and rule.endpoint != "swagger":
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule).rstrip("/")
            if path.endswith("available-ip"):
                continue  # the same view as available-ip/{count}, with count 1
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert method.lower() in spec["paths"][path], (method, path)
    deploy = spec["paths"]["/api/net/service/deploy"]["post"]["requestBody"]
    body = deploy["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(spec["components"]["schemas"][body]["required"]) == {
        "_id",
        "deployment_descriptor",
    }


def test_healthz_and_metrics(deployed):
    health = deployed.get("/healthz")
    assert health.status_code == 200
    assert health.get_json()["store"] in ("embedded", "mongodb")
    text = deployed.get("/metrics").get_data(as_text=True)
    assert 'oakestra_pool_used{pool="service_v4"} 3.0' in text
    assert "oakestra_outbox_depth" in text
    assert "oakestra_http_requests_total" in text
