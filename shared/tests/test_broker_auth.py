"""The broker ACL and password tooling (the ACL's effect is tested against a real Mosquitto
in integration-tests/test_mosquitto_acl.py)."""

import json

import pytest

from oakestra_net import broker_auth

pytestmark = pytest.mark.process  # real broker / server / subprocess


def test_every_cluster_user_gets_its_block_and_the_node_patterns_come_once():
    text = broker_auth.acl_text(["cluster-service-manager", "cluster-service-manager-2"])
    assert text.count("user cluster-service-manager\n") == 1
    assert text.count("user cluster-service-manager-2\n") == 1
    assert text.count("topic read nodes/+/net/#") == 2
    assert text.count("pattern write nodes/%u/net/service/#") == 1
    assert "readwrite" not in text  # nobody may both ask and answer
    assert "jobs/#" not in text


@pytest.mark.parametrize("user", ["", "a/b", "a+b", "#x", "a:b", " a", "x" * 200, 7])
def test_bad_user_names_are_refused(user):
    with pytest.raises(ValueError):
        broker_auth.check_user(user)


def test_add_node_writes_the_password_file_and_prints_the_netcfg_keys(tmp_path, capsys):
    passwd = tmp_path / "passwd"
    assert broker_auth.main(["add-node", str(passwd), "6630a0a0a0a0a0a0a0a0a0a0"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["MqttUsername"] == "6630a0a0a0a0a0a0a0a0a0a0"
    assert len(printed["MqttPassword"]) >= 24
    assert passwd.stat().st_mode & 0o777 == 0o600
    assert passwd.read_text().startswith("6630a0a0a0a0a0a0a0a0a0a0:$")
    assert printed["MqttPassword"] not in passwd.read_text()  # stored hashed


def test_add_cluster_prints_the_environment(tmp_path, capsys):
    code = broker_auth.main(["add-cluster", str(tmp_path / "p"), "--password", "s3cret-s3cret"])
    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        "MQTT_USERNAME=cluster-service-manager",
        "MQTT_PASSWORD=s3cret-s3cret",
    ]


def test_a_bad_node_id_fails_with_a_message(tmp_path, capsys):
    assert broker_auth.main(["add-node", str(tmp_path / "p"), "a/b"]) == 2
    assert "broker user 'a/b'" in capsys.readouterr().err
