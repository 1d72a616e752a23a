"""Start-up checks against a real Mosquitto and a closed local port: one actionable sentence."""

from __future__ import annotations

import datetime
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from oakestra_net.mqtt import MqttConfig
from oakestra_net.startcheck import mongo_problem, mqtt_problem
from testsupport import Broker, free_port, mosquitto_password_file

pytestmark = pytest.mark.process  # real broker / server / subprocess


def _config(broker_port: int, **credentials) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=broker_port, client_id="unused", **credentials)


def test_mqtt_check_accepts_a_broker_that_accepts(mosquitto):
    assert mqtt_problem(_config(mosquitto.port), 5) is None
    assert "as startcheck-" in mosquitto.log_text()  # not the service's own client id


def test_mqtt_check_reports_refused_credentials_at_once(tmp_path):
    passwords = mosquitto_password_file(tmp_path / "passwd", {"cluster": "s3cret"})
    broker = Broker(
        tmp_path / "broker", allow_anonymous=False, extra_config=[f"password_file {passwords}"]
    )
    with broker:
        assert mqtt_problem(_config(broker.port, username="cluster", password="s3cret"), 5) is None
        started = time.monotonic()
        problem = mqtt_problem(_config(broker.port, username="cluster", password="wrong"), 5)
        assert time.monotonic() - started < 4  # a refusal is final: no waiting for the timeout
        assert problem is not None
        assert problem.startswith("MQTT_USERNAME / MQTT_PASSWORD: the MQTT broker 127.0.0.1:")
        assert "not authorized" in problem or "user name or password" in problem
        anonymous = mqtt_problem(_config(broker.port), 5)
        assert anonymous is not None and "refused" in anonymous


def test_mqtt_check_reports_an_unreachable_broker():
    port = free_port()
    problem = mqtt_problem(_config(port), 0.5)
    assert problem == (
        f"MQTT_BROKER_URL / MQTT_BROKER_PORT: cannot reach the MQTT broker 127.0.0.1:{port}"
        " within 0.5 s (Connection refused); check the address and that it runs"
    )


def test_mqtt_check_waits_for_a_broker_that_is_starting(tmp_path):
    broker = Broker(tmp_path / "late")
    try:
        starter = threading.Timer(0.5, broker.start)
        starter.start()
        assert mqtt_problem(_config(broker.port), 10) is None
        starter.join()
    finally:
        broker.stop()


def test_mongo_check_reports_an_unreachable_server_with_the_password_masked():
    port = free_port()
    problem = mongo_problem(f"mongodb://admin:hunter2@127.0.0.1:{port}/", 0.5)
    assert problem is not None
    assert problem.startswith(
        f"MONGO_URL: cannot reach MongoDB at mongodb://admin:***@127.0.0.1:{port}/ within 0.5 s ("
    )
    assert "Connection refused" in problem and "hunter2" not in problem
    assert "\n" not in problem and "Topology" not in problem


def test_mqtt_check_reports_a_failed_tls_handshake(mosquitto, tmp_path):
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(_self_signed_ca())
    config = MqttConfig(
        host="127.0.0.1", port=mosquitto.port, client_id="unused", ca_file=str(ca_file)
    )
    problem = mqtt_problem(config, 5)  # the broker speaks plain MQTT on that port
    assert problem is not None
    assert problem.startswith(
        f"MQTT_CERT / CLUSTER_SERVICE_KEYFILE_PASSWORD: TLS handshake with the MQTT broker "
        f"127.0.0.1:{mosquitto.port} failed ("
    )
    assert "check that it speaks TLS on this port and the certificates" in problem


def _self_signed_ca() -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "startcheck-test-ca")])
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
