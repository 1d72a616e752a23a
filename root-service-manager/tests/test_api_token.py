"""The root's `/api/net/` behind NET_API_TOKEN, and its open mode (Oakestra's default)."""

from __future__ import annotations

import logging

import pytest
from rsm_payloads import X1_ID, service_payload

from root_service_manager.app import create_app
from root_service_manager.jwt_keys import KeyProvider

TOKEN = "t0ken-for-the-tests-0123456789"
CLUSTER = {"cluster_id": "c1", "cluster_address": "192.0.2.10", "cluster_port": 10110}
FAKE = {**CLUSTER, "cluster_address": "203.0.113.66"}


@pytest.fixture
def guarded(db):
    app = create_app(
        {"DB": db, "KEYS": KeyProvider(), "OUTBOX_AUTOSTART": False, "API_TOKEN": TOKEN}
    )
    yield app
    app.extensions["root"].outbox.stop()


def bearer(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def registered_address(app) -> str:
    return app.extensions["root"].clusters.by_id("c1")["cluster_address"]


def test_without_the_token_a_fake_cluster_registration_is_refused(guarded):
    client = guarded.test_client()
    assert client.post("/api/net/cluster", json=CLUSTER, headers=bearer()).status_code == 200
    missing = client.post("/api/net/cluster", json=FAKE)
    assert missing.status_code == 401
    assert "Authorization: Bearer" in missing.get_json()["reason"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = client.post("/api/net/cluster", json=FAKE, headers=bearer("x" * 30))
    assert wrong.status_code == 403
    assert wrong.get_json() == {
        "error": "Forbidden",
        "reason": "header 'Authorization': the bearer token is not valid",
    }
    assert registered_address(guarded) == "192.0.2.10"


def test_with_the_token_a_cluster_may_move(guarded):
    client = guarded.test_client()
    client.post("/api/net/cluster", json=CLUSTER, headers=bearer())
    assert client.post("/api/net/cluster", json=FAKE, headers=bearer()).status_code == 200
    assert registered_address(guarded) == "203.0.113.66"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/net/service/deploy", service_payload(X1_ID, "X1")),
        ("post", "/api/net/instance/deploy", {"_id": X1_ID, "instance_number": 0}),
        ("delete", f"/api/net/{X1_ID}/0", None),
        ("delete", f"/api/net/service/{X1_ID}", None),
        ("get", "/api/net/subnet", None),  # allocates
        ("get", "/api/net/service/X_default_X1_default/instances", None),
    ],
)
def test_every_net_route_needs_the_token(guarded, method, path, body):
    response = getattr(guarded.test_client(), method)(path, json=body)
    assert response.status_code == 401, response.get_json()
    assert guarded.extensions["root"].services.find_by_name("X.default.X1.default") is None


def test_operational_routes_stay_open(guarded):
    client = guarded.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/docs/openapi.json").status_code == 200


def test_a_guarded_root_sends_the_token_with_its_pushes(guarded):
    headers = guarded.extensions["root"].outbox.session.headers
    assert headers["Authorization"] == f"Bearer {TOKEN}"


def test_open_mode_works_and_says_so_loudly(db, caplog):
    with caplog.at_level(logging.WARNING):
        app = create_app({"DB": db, "KEYS": KeyProvider(), "OUTBOX_AUTOSTART": False})
    try:
        assert any("API OPEN" in r.getMessage() for r in caplog.records)
        client = app.test_client()
        assert client.post("/api/net/cluster", json=CLUSTER).status_code == 200
        assert client.post("/api/net/service/deploy", json=service_payload(X1_ID, "X1")).is_json
        assert client.get("/api/net/subnet").status_code == 200
        assert "Authorization" not in app.extensions["root"].outbox.session.headers
    finally:
        app.extensions["root"].outbox.stop()


def test_open_mode_refuses_moving_a_registered_cluster(client, root, caplog):
    assert client.post("/api/net/cluster", json=CLUSTER).status_code == 200
    moved = client.post("/api/net/cluster", json=FAKE)
    assert moved.status_code == 403
    assert "'cluster_address'" in moved.get_json()["reason"]
    assert "NET_API_TOKEN" in moved.get_json()["reason"]
    assert root.clusters.by_id("c1")["cluster_address"] == "192.0.2.10"
    assert "cluster re-registration from another address refused" in caplog.messages
    again = client.post("/api/net/cluster", json={**CLUSTER, "cluster_port": 10111})
    assert again.status_code == 200  # same address, new port: a restarted cluster


def test_a_short_token_is_refused_at_start(db):
    with pytest.raises(ValueError, match="NET_API_TOKEN must be at least 16"):
        create_app({"DB": db, "KEYS": KeyProvider(), "OUTBOX_AUTOSTART": False, "API_TOKEN": "x"})
