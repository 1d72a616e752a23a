"""Settings from the environment, and the gunicorn options derived from them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cluster_service_manager.cli import gunicorn_options
from cluster_service_manager.config import SETTINGS, ConfigError, Settings


def test_defaults_are_oakestras():
    settings = Settings.from_env({})
    assert settings.port == 10110
    assert settings.root_base_url == "http://0.0.0.0:10099"
    assert settings.mqtt_config().broker == "localhost:10003"
    assert settings.mqtt_config().ca_file is None
    assert settings.self_registration is None
    assert settings.mqtt_client_id.startswith("cluster-service-manager-")
    assert Settings.from_env({}).mqtt_client_id != settings.mqtt_client_id


def test_upstream_variables():
    env = {
        "MY_PORT": "10200",
        "ROOT_SERVICE_MANAGER_URL": "fd00::1",
        "ROOT_SERVICE_MANAGER_PORT": "10100",
        "MQTT_BROKER_URL": "[fd00::2]",
        "MQTT_BROKER_PORT": "1883",
        "MQTT_USERNAME": "cluster",
        "MQTT_PASSWORD": "secret",
    }
    settings = Settings.from_env(env)
    assert settings.port == 10200
    assert settings.root_base_url == "http://[fd00::1]:10100"
    mqtt = settings.mqtt_config()
    assert (mqtt.host, mqtt.port, mqtt.username, mqtt.password) == (
        "fd00::2",
        1883,
        "cluster",
        "secret",
    )
    full_url = Settings.from_env({"ROOT_SERVICE_MANAGER_URL": "https://root.example:443/"})
    assert full_url.root_base_url == "https://root.example:443"


def test_mqtt_cert_dir(tmp_path):
    with pytest.raises(ConfigError, match="MQTT_CERT.*ca.crt, cluster_net.crt, cluster_net.key"):
        Settings.from_env({"MQTT_CERT": str(tmp_path)})
    for name in ("ca.crt", "cluster_net.crt", "cluster_net.key"):
        (tmp_path / name).write_text("x")
    env = {"MQTT_CERT": str(tmp_path), "CLUSTER_SERVICE_KEYFILE_PASSWORD": "pw"}
    mqtt = Settings.from_env(env).mqtt_config()
    assert mqtt.ca_file == str(tmp_path / "ca.crt")
    assert mqtt.cert_file == str(tmp_path / "cluster_net.crt")
    assert mqtt.key_file == str(tmp_path / "cluster_net.key")
    assert mqtt.key_password == "pw"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MY_PORT": "http"}, "MY_PORT"),
        ({"MQTT_BROKER_PORT": "70000"}, "MQTT_BROKER_PORT"),
        ({"ROOT_SERVICE_MANAGER_PORT": "-1"}, "ROOT_SERVICE_MANAGER_PORT"),
        ({"ROOT_TIMEOUT": "soon"}, "ROOT_TIMEOUT"),
        ({"ROOT_TIMEOUT": "0"}, "ROOT_TIMEOUT"),
        ({"ROOT_WORKERS": "0"}, "ROOT_WORKERS"),
        ({"ROOT_RETRY_MAX_AGE": "inf"}, "ROOT_RETRY_MAX_AGE"),
        ({"MQTT_SHARED_SUBSCRIPTION": "maybe"}, "MQTT_SHARED_SUBSCRIPTION"),
        ({"MQTT_PASSWORD": "x"}, "MQTT_USERNAME"),
        ({"CLUSTER_PORT": "0"}, "CLUSTER_PORT"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_self_registration_needs_id_and_address():
    assert Settings.from_env({"CLUSTER_ID": "c1"}).self_registration is None
    env = {"CLUSTER_ID": "c1", "CLUSTER_ADDRESS": "192.0.2.10", "MY_PORT": "10111"}
    assert Settings.from_env(env).self_registration == ("c1", "192.0.2.10", 10111)
    env["CLUSTER_PORT"] = "20000"
    assert Settings.from_env(env).self_registration == ("c1", "192.0.2.10", 20000)


def test_shared_subscription_flag():
    assert Settings.from_env({}).mqtt_shared is None  # decided by the store
    assert Settings.from_env({"MQTT_SHARED_SUBSCRIPTION": "true"}).mqtt_shared is True
    assert Settings.from_env({"MQTT_SHARED_SUBSCRIPTION": "off"}).mqtt_shared is False


def test_one_worker_with_the_embedded_store():
    settings = Settings.from_env({})
    options = gunicorn_options(settings, {"GUNICORN_WORKERS": "4"})
    assert options["workers"] == 1
    assert options["bind"] == ["[::]:10110"]
    assert options["worker_class"] == "gthread"
    assert options["preload_app"] is False  # the MQTT client starts in the worker
    assert options["control_socket_disable"] is True
    env = {"GUNICORN_WORKERS": "3", "MONGO_URL": "mongodb://db:27017/", "BIND": "127.0.0.1:9"}
    options = gunicorn_options(settings, env)
    assert options["workers"] == 3 and options["bind"] == ["127.0.0.1:9"]


def test_table_defaults_are_the_field_defaults():
    from_table = Settings.from_env({})
    assert replace(from_table, mqtt_client_id="x") == Settings(mqtt_client_id="x")


def test_flags_beat_the_environment():
    flags = SETTINGS.parse_args(["--mqtt-port", "1884", "--root-url", "fd00::9"])
    settings = Settings.from_values(SETTINGS.values({"MQTT_BROKER_PORT": "1883"}, flags))
    assert settings.mqtt_port == 1884 and settings.root_base_url == "http://[fd00::9]:10099"
    with pytest.raises(ConfigError, match="^--mqtt-port='x' is not a TCP port"):
        SETTINGS.values({}, SETTINGS.parse_args(["--mqtt-port", "x"]))
