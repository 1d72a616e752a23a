"""The compose broker's secrets (oakestra_net.broker_init), and a real Mosquitto using them.

What an operator sees: the first start makes a CA, the broker's and the cluster's
certificates and the password file; a second start changes nothing (nodes keep trusting
the broker); a new name for the broker gives a new server certificate from the same
CA; a missing password is an error naming the variable; and Mosquitto accepts the
password file written without its tools, over TLS with those certificates, and refuses
anonymous clients and wrong passwords.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from oakestra_net import broker_auth, broker_init, broker_pki, mosquitto_passwd
from oakestra_net.mqtt import MqttClient, MqttConfig
from testsupport import Broker

REPO = Path(__file__).resolve().parents[2]
COMPOSE_CONF = REPO / "mosquitto" / "mosquitto-compose.conf"
NODE_ID = "6630a0a0a0a0a0a0a0a0a0a0"
ENV = {"CLUSTER_MQTT_PASSWORD": "cluster-secret", "NODE_MQTT_USERNAME": NODE_ID,
       "NODE_MQTT_PASSWORD": "node-secret"}  # fmt: skip


def run(tmp_path: Path, *args: str, env=ENV) -> int:
    dirs = [f"--{name}={tmp_path / name}" for name in ("pki", "broker", "cluster", "ca")]
    return broker_init.main([*dirs, *args], env=env)


@pytest.fixture(autouse=True)
def not_root_owned(monkeypatch):
    # the test's files stay the test's (uids of the images do not exist here)
    monkeypatch.setattr(broker_init.os, "chown", lambda *a: None)


def test_a_password_hash_verifies_only_its_password():
    hashed = mosquitto_passwd.hash_password("s3cret")
    assert hashed.startswith("$7$101$")
    assert mosquitto_passwd.verify("s3cret", hashed)
    assert not mosquitto_passwd.verify("s3cret ", hashed)
    assert not mosquitto_passwd.verify("s3cret", "$6$abc$def")
    assert hashed != mosquitto_passwd.hash_password("s3cret")  # salted


def test_a_user_is_added_or_replaced_and_others_kept():
    text = mosquitto_passwd.with_user("", "a", "pa")
    text = mosquitto_passwd.with_user(text, "b", "pb")
    text = mosquitto_passwd.with_user(text, "a", "pa2")
    entries = mosquitto_passwd.users(text)
    assert list(entries) == ["a", "b"]
    assert mosquitto_passwd.verify("pa2", entries["a"])
    assert list(mosquitto_passwd.users(mosquitto_passwd.without_user(text, "a"))) == ["b"]
    with pytest.raises(ValueError):
        mosquitto_passwd.with_user(text, "a:b", "x")


@pytest.mark.process
@pytest.mark.skipif(not shutil.which("mosquitto_passwd"), reason="mosquitto_passwd missing")
def test_hashes_of_mosquitto_passwd_verify_here(tmp_path):
    passwd = tmp_path / "passwd"
    broker_auth.set_password(passwd, "u", "from-the-tool")
    hashed = mosquitto_passwd.users(passwd.read_text())["u"]
    assert mosquitto_passwd.verify("from-the-tool", hashed)


def test_the_first_start_makes_every_file_and_a_second_changes_nothing(tmp_path, capsys):
    assert run(tmp_path, "init") == 0
    out = capsys.readouterr().out
    assert "TLS: a new CA" in out and f"broker user {NODE_ID}: set" in out
    expected = {
        "pki": {"ca.crt", "ca.key"},
        "broker": {"ca.crt", "server.crt", "server.key", "passwd"},
        "cluster": {"ca.crt", "cluster_net.crt", "cluster_net.key"},
        "ca": {"ca.crt"},
    }
    for directory, names in expected.items():
        assert {p.name for p in (tmp_path / directory).iterdir()} == names, directory
    for private in ("pki/ca.key", "broker/server.key", "broker/passwd", "cluster/cluster_net.key"):
        assert (tmp_path / private).stat().st_mode & 0o777 == 0o600, private
    users = mosquitto_passwd.users((tmp_path / "broker/passwd").read_text())
    assert mosquitto_passwd.verify("cluster-secret", users[broker_auth.CLUSTER_USER])
    assert mosquitto_passwd.verify("node-secret", users[NODE_ID])
    names = broker_pki.server_names((tmp_path / "broker/server.crt").read_bytes())
    assert {"mqtt", "localhost", "127.0.0.1", "::1"} <= names

    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert run(tmp_path, "init") == 0
    assert "TLS:" not in capsys.readouterr().out
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_new_broker_name_gets_a_new_certificate_from_the_same_ca(tmp_path):
    assert run(tmp_path, "init") == 0
    ca = (tmp_path / "ca/ca.crt").read_bytes()
    assert run(tmp_path, "init", env={**ENV, "MQTT_TLS_NAMES": "broker.example, 198.51.100.7"}) == 0
    names = broker_pki.server_names((tmp_path / "broker/server.crt").read_bytes())
    assert {"broker.example", "198.51.100.7", "mqtt"} <= names
    assert (tmp_path / "ca/ca.crt").read_bytes() == ca


def test_missing_or_half_credentials_are_errors_naming_the_variable(tmp_path, capsys):
    assert run(tmp_path, "init", env={}) == 2
    assert "CLUSTER_MQTT_PASSWORD" in capsys.readouterr().err
    half = {"CLUSTER_MQTT_PASSWORD": "c", "NODE_MQTT_USERNAME": NODE_ID}
    assert run(tmp_path, "init", env=half) == 2
    assert "NODE_MQTT_PASSWORD" in capsys.readouterr().err
    bad = {**ENV, "NODE_MQTT_USERNAME": "a/b"}
    assert run(tmp_path, "init", env=bad) == 2
    assert "broker user 'a/b'" in capsys.readouterr().err


def test_add_node_prints_the_netcfg_keys_and_keeps_the_other_users(tmp_path, capsys):
    assert run(tmp_path, "init") == 0
    capsys.readouterr()
    assert run(tmp_path, "add-node", "6630b0b0b0b0b0b0b0b0b0b0") == 0
    keys = json.loads(capsys.readouterr().out)
    users = mosquitto_passwd.users((tmp_path / "broker/passwd").read_text())
    assert set(users) == {broker_auth.CLUSTER_USER, NODE_ID, keys["MqttUsername"]}
    assert mosquitto_passwd.verify(keys["MqttPassword"], users[keys["MqttUsername"]])
    assert run(tmp_path, "remove-node", NODE_ID) == 0
    assert NODE_ID not in (tmp_path / "broker/passwd").read_text()
    assert run(tmp_path, "ca") == 0
    assert capsys.readouterr().out == (tmp_path / "ca/ca.crt").read_text()


def test_the_operators_certificates_are_kept_as_given(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    ca = broker_pki.new_ca("their CA")
    files = {
        "ca.crt": ca.cert_pem,
        **dict(zip(("server.crt", "server.key"), _pair(ca, ["broker.example"]), strict=True)),
        **dict(zip(("cluster_net.crt", "cluster_net.key"), _pair(ca, []), strict=True)),
    }
    for name, data in files.items():
        (theirs / name).write_bytes(data)
    assert run(tmp_path, "init") == 0  # ours first: the import replaces them
    assert run(tmp_path, "import-tls", str(theirs)) == 0
    assert run(tmp_path, "init", env={**ENV, "MQTT_TLS_NAMES": "other.example"}) == 0
    assert (tmp_path / "broker/server.crt").read_bytes() == files["server.crt"]
    assert (tmp_path / "ca/ca.crt").read_bytes() == ca.cert_pem
    assert (tmp_path / "cluster/ca.crt").read_bytes() == ca.cert_pem
    assert not (tmp_path / "pki" / "ca.key").exists()  # nothing signs in its name


def _pair(ca: broker_pki.KeyPair, names: list[str]) -> tuple[bytes, bytes]:
    pair = broker_pki.issue(ca, "x", names)
    return pair.cert_pem, pair.key_pem


def compose_broker_config(tmp_path: Path) -> list[str]:
    """mosquitto-compose.conf's settings with the test's paths (the fixture's listener)."""
    lines = []
    for line in COMPOSE_CONF.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.split()[0] in ("listener", "log_dest", "log_type", "allow_anonymous"):
            continue
        line = line.replace("/mosquitto/config/broker/", f"{tmp_path / 'broker'}/")
        lines.append(line.replace("/mosquitto/config/acl", str(REPO / "mosquitto" / "acl")))
    return lines


@pytest.mark.process
@pytest.mark.skipif(not shutil.which("mosquitto"), reason="mosquitto missing")
def test_mosquitto_takes_the_files_over_tls_and_only_with_a_password(tmp_path):
    assert run(tmp_path, "init") == 0
    broker = Broker(tmp_path, allow_anonymous=False, extra_config=compose_broker_config(tmp_path))
    broker.start()
    clients: list[MqttClient] = []

    def login(user, password, ca=True) -> bool:
        config = MqttConfig(
            "127.0.0.1", broker.port, user or "anonymous", username=user, password=password,
            ca_file=str(tmp_path / "ca/ca.crt") if ca else None,
            min_reconnect_delay=0.1, max_reconnect_delay=0.5,
        )  # fmt: skip
        client = MqttClient(config, workers=1, name=f"login-{user}")
        clients.append(client)
        client.start()
        return client.wait_connected(2.0)

    try:
        assert login(broker_auth.CLUSTER_USER, "cluster-secret")
        assert login(NODE_ID, "node-secret")
        assert not login(NODE_ID, "wrong")
        assert not login(None, None)
        assert not login(NODE_ID + "x", "node-secret", ca=False)  # clear text
        sub = subprocess.run(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "#", "-W", "2",
             "--cafile", str(tmp_path / "ca/ca.crt")],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        assert "not authorised" in sub.stdout + sub.stderr
    finally:
        for client in clients:
            client.stop()
        broker.stop()
