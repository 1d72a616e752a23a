"""Configuration: files, environment, overrides, their precedence and every error path."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from net_manager.config import ConfigError, NetConfig, TunConfig, load_config

# What upstream ships (NNM/config/netcfg.json and tuncfg.json).
UPSTREAM_NETCFG = {
    "NodePublicAddress": "0.0.0.0",
    "NodePublicPort": "50103",
    "ClusterUrl": "0.0.0.0",
    "ClusterMqttPort": "10003",
    "Debug": False,
    "MqttCert": "",
    "MqttKey": "",
}
UPSTREAM_TUNCFG = {
    "HostTunnelDeviceName": "goProxyTun",
    "TunnelIP": "10.19.1.254",
    "ProxySubnetwork": "10.30.0.0",
    "ProxySubnetworkMask": "255.255.0.0",
    "TunnelPort": 50103,
    "MTUsize": 1450,
    "TunNetIPv6": "fcef::dead:beef",
    "ProxySubnetworkIPv6": "fcef::",
    "ProxySubnetworkIPv6Prefix": 21,
}


def write(directory: Path, name: str, content: Any) -> Path:
    path = directory / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def load(directory: Path, env: dict[str, str] | None = None, **overrides: object) -> NetConfig:
    return load_config(str(directory), env=env or {}, overrides=overrides)


def test_upstream_files_load(tmp_path: Path) -> None:
    write(tmp_path, "netcfg.json", UPSTREAM_NETCFG)
    write(tmp_path, "tuncfg.json", UPSTREAM_TUNCFG)
    config = load(tmp_path)
    assert config.node_public_port == 50103
    assert config.cluster_mqtt_port == 10003
    assert config.tun.device_name == "goProxyTun"
    assert config.tun.mtu == 1450


def test_every_file_key_is_read(tmp_path: Path) -> None:
    write(
        tmp_path,
        "netcfg.json",
        {
            "NodePublicAddress": "192.168.1.10",
            "NodePublicPort": 50200,
            "ClusterUrl": "cluster.example.org",
            "ClusterMqttPort": 1883,
            "DefaultInterface": "eth1",
            "Debug": True,
            "PublicIPNetworking": True,
            "MqttCert": "/certs/node.pem",
            "MqttKey": "/certs/node.key",
            "MqttCa": "/certs/ca.pem",
            "MqttUsername": "node1",
            "MqttPassword": "secret",
        },
    )
    write(
        tmp_path,
        "tuncfg.json",
        {
            "HostTunnelDeviceName": "oak-tun9",
            "TunnelIP": "10.19.1.253",
            "ProxySubnetwork": "10.30.0.0",
            "ProxySubnetworkMask": "255.255.0.0",
            "TunnelPort": "50300",
            "MTUsize": "1400",
            "TunNetIPv6": "fcef::1",
            "ProxySubnetworkIPv6": "fdff::",
            "ProxySubnetworkIPv6Prefix": 16,
        },
    )
    assert load(tmp_path) == NetConfig(
        node_public_address="192.168.1.10",
        node_public_port=50200,
        cluster_url="cluster.example.org",
        cluster_mqtt_port=1883,
        default_interface="eth1",
        debug=True,
        public_ip_networking=True,
        mqtt_cert="/certs/node.pem",
        mqtt_key="/certs/node.key",
        mqtt_ca="/certs/ca.pem",
        mqtt_username="node1",
        mqtt_password="secret",
        tun=TunConfig(
            device_name="oak-tun9",
            tunnel_ip="10.19.1.253",
            tun_net_ipv6="fcef::1",
            tunnel_port=50300,
            mtu=1400,
        ),
    )


def test_missing_netcfg_means_defaults_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="net_manager.config"):
        config = load(tmp_path / "nowhere")
    assert config == NetConfig()
    assert "config file not found, using defaults" in caplog.text


def test_missing_tuncfg_means_tun_defaults_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "netcfg.json", UPSTREAM_NETCFG)
    with caplog.at_level(logging.WARNING, logger="net_manager.config"):
        assert load(tmp_path).tun == TunConfig()
    assert caplog.text == ""


def test_config_dir_comes_from_the_environment(tmp_path: Path) -> None:
    write(tmp_path, "netcfg.json", {"ClusterUrl": "10.0.0.5"})
    config = load_config(env={"NETMANAGER_CONFIG_DIR": str(tmp_path)}, overrides={})
    assert config.cluster_url == "10.0.0.5"


def test_config_dir_argument_beats_the_environment(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write(tmp_path / "a", "netcfg.json", {"ClusterUrl": "10.0.0.1"})
    write(tmp_path / "b", "netcfg.json", {"ClusterUrl": "10.0.0.2"})
    config = load_config(str(tmp_path / "a"), env={"NETMANAGER_CONFIG_DIR": str(tmp_path / "b")})
    assert config.cluster_url == "10.0.0.1"


def test_null_values_and_unknown_keys_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "netcfg.json", {"NodePublicPort": None, "SomethingNew": 3})
    assert load(tmp_path) == NetConfig()


# ---------------------------------------------------------------- precedence


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    write(tmp_path, "netcfg.json", {"NodePublicAddress": "192.168.1.10", "ClusterUrl": "a.b"})
    env = {
        "NODE_PUBLIC_ADDRESS": "192.168.1.99",
        "NODE_PUBLIC_PORT": "50555",
        "CLUSTER_URL": "cluster-broker",
        "CLUSTER_MQTT_PORT": "1883",
        "DEFAULT_INTERFACE": "wlan0",
        "TUN_MTU_SIZE": "1400",
        "NETMANAGER_SOCKET": "/run/nm.sock",
        "NETMANAGER_PORT": "6000",
        "NETMANAGER_STATE_FILE": "/tmp/state.json",
        "MQTT_USERNAME": "user",
        "MQTT_PASSWORD": "pass",
        "ADDRESS_WATCH_INTERVAL": "0",
    }
    config = load(tmp_path, env)
    assert (config.node_public_address, config.node_public_port) == ("192.168.1.99", 50555)
    assert (config.cluster_url, config.cluster_mqtt_port) == ("cluster-broker", 1883)
    assert config.default_interface == "wlan0"
    assert config.container_mtu == 1400
    assert (config.socket_path, config.tcp_port) == ("/run/nm.sock", 6000)
    assert config.state_file == "/tmp/state.json"
    assert (config.mqtt_username, config.mqtt_password) == ("user", "pass")
    assert config.address_watch_interval == 0.0


def test_empty_environment_value_counts_as_unset(tmp_path: Path) -> None:
    write(tmp_path, "netcfg.json", {"ClusterUrl": "10.0.0.5"})
    assert load(tmp_path, {"CLUSTER_URL": "", "NODE_PUBLIC_PORT": ""}).cluster_url == "10.0.0.5"


def test_overrides_beat_environment_and_file(tmp_path: Path) -> None:
    write(tmp_path, "netcfg.json", {"ClusterUrl": "from-file", "Debug": False})
    env = {"CLUSTER_URL": "from-env", "NETMANAGER_PORT": "6000"}
    config = load(
        tmp_path, env, cluster_url="from-cli", debug=True, tcp_port=None, reconcile_interval=2
    )
    assert config.cluster_url == "from-cli"
    assert config.debug is True
    assert config.tcp_port == 6000  # None: the flag was not given
    assert config.reconcile_interval == 2.0


def test_overrides_accept_strings_like_the_environment(tmp_path: Path) -> None:
    config = load(tmp_path, None, node_public_port="50200", debug="yes", interest_timeout="2.5")
    assert (config.node_public_port, config.debug, config.interest_timeout) == (50200, True, 2.5)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("NodePublicPort", "abc", "must be a port number 1-65535, got 'abc'"),
        ("NodePublicPort", 0, "must be a port number 1-65535, got 0"),
        ("NodePublicPort", 65536, "must be a port number 1-65535, got 65536"),
        ("NodePublicPort", True, "must be a port number 1-65535, got True"),
        ("NodePublicPort", " 50103", "must be a port number 1-65535, got ' 50103'"),
        ("ClusterMqttPort", 10003.0, "must be a port number 1-65535, got 10003.0"),
        ("NodePublicAddress", "my-node", "must be an IP address, got 'my-node'"),
        ("NodePublicAddress", "fe80::1%eth0", "must be an IP address without a scope"),
        ("ClusterUrl", "tcp://broker:1883", "must be a host name or IP address"),
        ("ClusterUrl", "", "must be a host name or IP address, got ''"),
        ("ClusterUrl", "fd00::zz", "must be a host name or IP address, got 'fd00::zz'"),
        ("DefaultInterface", "a-very-long-interface0", "must be an interface name of 1-15"),
        ("DefaultInterface", "eth 0", "must be an interface name"),
        ("Debug", "maybe", "must be true or false, got 'maybe'"),
        ("PublicIPNetworking", 1.5, "must be true or false, got 1.5"),
        ("MqttCert", 42, "must be a string, got 42"),
        ("MqttPassword", ["x"], "must be a string, got ['x']"),
    ],
)
def test_bad_netcfg_value_names_file_and_key(
    tmp_path: Path, key: str, value: object, expected: str
) -> None:
    path = write(tmp_path, "netcfg.json", {key: value})
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(caught.value).startswith(f"{path}: {key} {expected}")


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("10.0.0.5", "10.0.0.5"),
        ("FD00::0:1", "fd00::1"),
        ("cluster.example.org", "cluster.example.org"),
        ("cluster.example.org.", "cluster.example.org."),
        ("cluster_mqtt", "cluster_mqtt"),  # docker compose service names
    ],
)
def test_cluster_url_is_a_host_name_or_address(tmp_path: Path, url: str, stored: str) -> None:
    write(tmp_path, "netcfg.json", {"ClusterUrl": url})
    assert load(tmp_path).cluster_url == stored


def test_error_message_matches_the_documented_form(tmp_path: Path) -> None:
    write(tmp_path, "netcfg.json", {"NodePublicPort": "abc"})
    message = "netcfg.json: NodePublicPort must be a port number 1-65535, got 'abc'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("HostTunnelDeviceName", "goProxyTunnelDevice", "must be an interface name of 1-15"),
        ("HostTunnelDeviceName", "", "must be an interface name"),
        ("HostTunnelDeviceName", "tun/0", "must be an interface name"),
        ("TunnelIP", "fcef::1", "must be an IPv4 address, got 'fcef::1'"),
        ("ProxySubnetworkMask", "255.0.255.0", "must be an IPv4 netmask"),
        ("TunnelPort", -1, "must be a port number 1-65535"),
        ("MTUsize", 500, "must be an MTU 1280-65535, got 500"),
        ("TunNetIPv6", "10.19.1.254", "must be an IPv6 address"),
        ("ProxySubnetworkIPv6Prefix", 129, "must be an IPv6 prefix length 0-128"),
    ],
)
def test_bad_tuncfg_value_names_file_and_key(
    tmp_path: Path, key: str, value: object, expected: str
) -> None:
    write(tmp_path, "netcfg.json", {})
    path = write(tmp_path, "tuncfg.json", {key: value})
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(caught.value).startswith(f"{path}: {key} {expected}")


@pytest.mark.parametrize("name", ["netcfg.json", "tuncfg.json"])
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"NodePublicPort": ', "invalid JSON: Expecting value: line 1 column 20"),
        ("[1, 2]", "must hold a JSON object, got list"),
        ("null", "must hold a JSON object, got NoneType"),
        (b"\xff\xfe{}", "not valid UTF-8 (byte 0)"),
    ],
)
def test_unreadable_file_names_the_file(
    tmp_path: Path, name: str, content: str | bytes, expected: str
) -> None:
    write(tmp_path, "netcfg.json", {})
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {expected}")):
        load(tmp_path)


def test_config_path_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "netcfg.json").mkdir()
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'netcfg.json'}: cannot read")):
        load(tmp_path)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("NODE_PUBLIC_PORT", "abc", "env NODE_PUBLIC_PORT must be a port number 1-65535"),
        ("CLUSTER_MQTT_PORT", "99999", "env CLUSTER_MQTT_PORT must be a port number 1-65535"),
        ("NODE_PUBLIC_ADDRESS", "localhost", "env NODE_PUBLIC_ADDRESS must be an IP address"),
        ("TUN_MTU_SIZE", "9x", "env TUN_MTU_SIZE must be an MTU 1280-65535, got '9x'"),
        ("NETMANAGER_PORT", "-1", "env NETMANAGER_PORT must be a port number 0-65535 (0: off)"),
        ("ADDRESS_WATCH_INTERVAL", "-5", "env ADDRESS_WATCH_INTERVAL must be a number of"),
        ("ADDRESS_WATCH_INTERVAL", "nan", "env ADDRESS_WATCH_INTERVAL must be a number of"),
        ("DEFAULT_INTERFACE", "x" * 16, "env DEFAULT_INTERFACE must be an interface name"),
    ],
)
def test_bad_environment_value_names_the_variable(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load(tmp_path, {variable: value})


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("reconcile_interval", 0, "option reconcile_interval must be a number of seconds > 0"),
        ("table_query_timeout", "soon", "option table_query_timeout must be a number of"),
        ("interest_timeout", float("inf"), "option interest_timeout must be a number of"),
        ("socket_path", "", "option socket_path must be a non-empty path, got ''"),
        ("debug", 2, "option debug must be true or false, got 2"),
    ],
)
def test_bad_override_names_the_option(
    tmp_path: Path, option: str, value: object, expected: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load(tmp_path, None, **{option: value})


def test_unknown_override_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option 'tun_mtu'"):
        load(tmp_path, None, tun_mtu=1400)


def test_long_bad_value_is_shortened_in_the_message(tmp_path: Path) -> None:
    write(tmp_path, "netcfg.json", {"ClusterUrl": "x" * 1000 + "!"})
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert len(str(caught.value)) < len(str(tmp_path)) + 150


# ---------------------------------------------------------------- proxy subnets


def test_upstream_ipv6_proxy_subnet_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "netcfg.json", UPSTREAM_NETCFG)
    write(tmp_path, "tuncfg.json", UPSTREAM_TUNCFG)
    with caplog.at_level(logging.WARNING, logger="net_manager.config"):
        tun = load(tmp_path).tun
    assert (tun.proxy_subnetwork_ipv6, tun.proxy_subnetwork_ipv6_prefix) == ("fdff::", 16)
    assert "proxy subnet fcef::/21 does not contain the service IPs; using fdff::/16" in (
        caplog.text
    )


def test_wider_ipv6_proxy_subnet_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(
        tmp_path, "tuncfg.json", {"ProxySubnetworkIPv6": "fc00::", "ProxySubnetworkIPv6Prefix": 7}
    )
    with caplog.at_level(logging.WARNING, logger="net_manager.config"):
        tun = load(tmp_path).tun
    assert (tun.proxy_subnetwork_ipv6, tun.proxy_subnetwork_ipv6_prefix) == ("fc00::", 7)
    assert "proxy subnet" not in caplog.text


def test_prefix_alone_can_break_the_ipv6_proxy_subnet(tmp_path: Path) -> None:
    write(tmp_path, "tuncfg.json", {"ProxySubnetworkIPv6Prefix": 21})
    tun = load(tmp_path).tun
    assert (tun.proxy_subnetwork_ipv6, tun.proxy_subnetwork_ipv6_prefix) == ("fdff::", 16)


def test_ipv4_proxy_subnet_missing_the_service_ips_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "tuncfg.json", {"ProxySubnetwork": "10.31.0.0"})
    with caplog.at_level(logging.WARNING, logger="net_manager.config"):
        tun = load(tmp_path).tun
    assert (tun.proxy_subnetwork, tun.proxy_subnetwork_mask) == ("10.30.0.0", "255.255.0.0")
    assert "proxy subnet 10.31.0.0/16 does not contain the service IPs" in caplog.text


def test_password_is_not_in_the_repr() -> None:
    assert "hunter2" not in repr(NetConfig(mqtt_password="hunter2"))


def test_every_environment_variable_has_a_settings_row_with_a_flag():
    from net_manager.config import CONFIG_DIR_ENV, ENV_VARS, SETTINGS

    rows = {row.env: row for row in SETTINGS.rows}
    for variable in [*ENV_VARS, CONFIG_DIR_ENV, "LOG_LEVEL", "LOG_FORMAT"]:
        assert variable in rows, f"{variable} is read but has no flag"
        assert rows[variable].flag.startswith("--")
