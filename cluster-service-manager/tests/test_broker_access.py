"""Broker access: TLS client certificates as upstream, username/password, shared subscription."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from csm_helpers import LiveServer, SimNode, make_settings

from cluster_service_manager.app import create_app
from cluster_service_manager.config import Settings
from testsupport import Broker, mosquitto_password_file, wait_until

pytestmark = pytest.mark.usefixtures("fail_on_log_exception")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, issuer_key, issuer: x509.Name | None, *, ca: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _write(directory: Path, name: str, key, cert) -> None:
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture
def pki(tmp_path) -> Path:
    """ca.crt plus server, cluster_net (the cluster's) and node client certificates."""
    directory = tmp_path / "certs"
    directory.mkdir()
    ca_key, ca_cert = _issue("oakestra-test-ca", None, None, ca=True)
    _write(directory, "ca", ca_key, ca_cert)
    for name in ("server", "cluster_net", "node"):
        key, cert = _issue(name, ca_key, ca_cert.subject)
        _write(directory, name, key, cert)
    return directory


def _serve(broker: Broker, root_url: str, db, **overrides):
    settings = make_settings(broker, root_url, **overrides)
    app = create_app({"DB": db, "SETTINGS": settings})
    return app, LiveServer(app).start()


def _stop(app, server) -> None:
    server.stop()
    app.extensions["cluster_service_manager"].stop()


def test_tls_with_client_certificates(tmp_path, pki, root_server, db):
    broker = Broker(
        tmp_path / "tls-broker",
        extra_config=[
            f"cafile {pki / 'ca.crt'}",
            f"certfile {pki / 'server.crt'}",
            f"keyfile {pki / 'server.key'}",
            "require_certificate true",
        ],
    )
    with broker:
        settings = Settings.from_env({"MQTT_CERT": str(pki)})
        app, server = _serve(broker, root_server.url, db, mqtt_cert_dir=settings.mqtt_cert_dir)
        try:
            root_server.register_cluster("c1", server.port)
            endpoint = app.extensions["cluster_service_manager"].endpoint
            assert endpoint.wait_subscribed(5)
            node = SimNode(
                broker.host,
                broker.port,
                ca_file=str(pki / "ca.crt"),
                cert_file=str(pki / "node.crt"),
                key_file=str(pki / "node.key"),
            ).start()
            try:
                assert node.request_subnet()["address"]
            finally:
                node.stop()
        finally:
            _stop(app, server)


def test_username_and_password(tmp_path, root_server, db, caplog):
    passwords = mosquitto_password_file(tmp_path / "passwd", {"cluster": "s3cret"})
    broker = Broker(
        tmp_path / "auth-broker",
        allow_anonymous=False,
        extra_config=[f"password_file {passwords}"],
    )
    with broker:
        good, good_server = _serve(
            broker, root_server.url, db, mqtt_username="cluster", mqtt_password="s3cret"
        )
        bad, bad_server = _serve(
            broker, root_server.url, db, mqtt_username="cluster", mqtt_password="wrong"
        )
        try:
            wait_until(lambda: good.test_client().get("/healthz").status_code == 200)
            wait_until(lambda: "mqtt connection refused" in caplog.messages)
            assert bad.test_client().get("/healthz").status_code == 503
            assert bad.test_client().get("/healthz").get_json()["broker"] == "disconnected"
        finally:
            _stop(good, good_server)
            _stop(bad, bad_server)


def test_two_processes_share_the_nodes_through_a_shared_subscription(make_cluster, make_node):
    first = make_cluster(mqtt_shared=True)
    second = make_cluster(mqtt_shared=True, register=False)  # same store, same cluster
    assert all(
        p.startswith("$share/cluster-sm/nodes/+/net/") for p in first.parts.endpoint.patterns
    )
    nodes = [make_node() for _ in range(12)]
    subnets = {node.node_id: node.request_subnet()["address"] for node in nodes}
    assert len(set(subnets.values())) == len(nodes)
    first.idle()
    second.idle()
    for node in nodes:  # asked again: the same subnet, and each request answered once
        assert node.request_subnet()["address"] == subnets[node.node_id]
        assert len(node.messages(f"nodes/{node.node_id}/net/subnetwork/result")) == 2
    handled = [c.parts.endpoint.client.stats()["received"] for c in (first, second)]
    assert all(count > 0 for count in handled), handled
