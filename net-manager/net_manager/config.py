"""The net manager's configuration: files, environment and command-line overrides, validated.

Sources, later ones winning:
1. built-in defaults (the NetConfig / TunConfig field defaults);
2. `netcfg.json` and `tuncfg.json` in the config directory (argument `config_dir`, else
   env `NETMANAGER_CONFIG_DIR`, else /etc/netmanager), with the node engine's keys
   plus MqttCa, MqttUsername, MqttPassword in netcfg.json. A JSON null reads as
   "not set"; unknown keys are logged and ignored;
3. environment variables (ENV_VARS below; an empty value counts as not set);
4. `overrides`, keyed by NetConfig field name (from CLI flags; None means not given).

Deliberate differences from upstream:
- a missing netcfg.json is not fatal: the defaults are used and a warning is logged
  (the node engine's `/register` supplies the cluster address anyway);
- a tuncfg.json that exists but cannot be read or parsed is an error (upstream silently
  fell back to its defaults); a missing one means the defaults;
- a proxy subnet that does not contain the platform's service range (the IPv6 `fcef::/21`
  upstream ships) is replaced by the platform range (10.30.0.0/16,
  fdff::/16) with a warning; a wider subnet that contains it is kept as written.

`SETTINGS` is the console script's table of the environment settings (variable, flag,
meaning, default): the CLI exports the flags into the environment before loading, so
step 3 sees them and a flag wins over its variable.

Every bad value raises ConfigError naming the source and key, e.g.
`/etc/netmanager/netcfg.json: NodePublicPort must be a port number 1-65535, got 'abc'`.
What the daemon does with each setting is the daemon's business.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import Any, NoReturn

from oakestra_net import settings as s
from oakestra_net.addressing import SERVICE_V4, SERVICE_V6
from oakestra_net.log import get_logger

log = get_logger(__name__)

DEFAULT_CONFIG_DIR = "/etc/netmanager"
CONFIG_DIR_ENV = "NETMANAGER_CONFIG_DIR"
NETCFG = "netcfg.json"
TUNCFG = "tuncfg.json"
IFNAMSIZ = 15  # longest Linux interface name

# Keeps error messages readable whatever an operator pasted into a file.
_MAX_SHOWN = 60
_HOST_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_HOST_LABEL}(\.{_HOST_LABEL})*\.?")
_DIGITS = re.compile(r"[0-9]{1,10}")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class ConfigError(ValueError):
    """A configuration value, file or option that cannot be used; names source and key."""


@dataclass(frozen=True)
class TunConfig:
    """The TUN device and the proxy subnets (tuncfg.json)."""

    device_name: str = "oak-tun0"
    tunnel_ip: str = "10.19.1.254"
    tun_net_ipv6: str = "fcef::dead:beef"
    proxy_subnetwork: str = "10.30.0.0"
    proxy_subnetwork_mask: str = "255.255.0.0"
    proxy_subnetwork_ipv6: str = "fdff::"
    proxy_subnetwork_ipv6_prefix: int = 16
    tunnel_port: int = 50103
    mtu: int = 1450


@dataclass(frozen=True)
class NetConfig:
    """Everything the node daemon is configured with."""

    node_public_address: str = "0.0.0.0"  # 0.0.0.0: detect the address of the default route
    node_public_port: int = 50103
    cluster_url: str = "0.0.0.0"  # 0.0.0.0: wait for /register to name the cluster
    cluster_mqtt_port: int = 10003
    default_interface: str = ""
    debug: bool = False
    public_ip_networking: bool = False
    mqtt_cert: str = ""
    mqtt_key: str = ""
    mqtt_ca: str = ""
    mqtt_username: str = ""
    mqtt_password: str = field(default="", repr=False)
    container_mtu: int = 1450
    socket_path: str = "/etc/netmanager/netmanager.sock"
    tcp_port: int = 0  # 0: no TCP listener
    state_file: str = "/var/lib/oakestra/netmanager/state.json"
    address_watch_interval: float = 120.0  # 0: do not watch
    reconcile_interval: float = 30.0
    interest_timeout: float = 10.0
    table_query_timeout: float = 5.0
    dataplane_mode: str = "auto"  # tun | kernel | auto (kernel when nft and the kernel can)
    tun: TunConfig = TunConfig()


# ---------------------------------------------------------------- value parsers
# Each takes the raw value and where it came from ("<file>: <Key>", "env VAR", "option x").

Parser = Callable[[Any, str], Any]


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else f"{text[: _MAX_SHOWN - 5]}...{text[-2:]}"


def _fail(where: str, expected: str, value: object) -> NoReturn:
    raise ConfigError(f"{where} must be {expected}, got {_show(value)}")


def _integer(value: object, where: str, low: int, high: int, expected: str) -> int:
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        _fail(where, expected, value)
    if not low <= number <= high:
        _fail(where, expected, value)
    return number


def _port(value: object, where: str) -> int:
    return _integer(value, where, 1, 65_535, "a port number 1-65535")


def _port_or_off(value: object, where: str) -> int:
    return _integer(value, where, 0, 65_535, "a port number 0-65535 (0: off)")


def _mtu(value: object, where: str) -> int:
    return _integer(value, where, 1280, 65_535, "an MTU 1280-65535")


def _prefix_v6(value: object, where: str) -> int:
    return _integer(value, where, 0, 128, "an IPv6 prefix length 0-128")


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        _fail(where, "a string", value)
    return value


def _path(value: object, where: str) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        _fail(where, "a non-empty path", value)
    return value


def _address(value: object, where: str, version: int | None, expected: str) -> str:
    try:
        parsed = ip_address(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or (version is not None and parsed.version != version):
        _fail(where, expected, value)
    if isinstance(parsed, IPv6Address) and parsed.scope_id is not None:
        _fail(where, f"{expected} without a scope (%...)", value)
    return str(parsed)


def _ip(value: object, where: str) -> str:
    return _address(value, where, None, "an IP address")


def _ipv4(value: object, where: str) -> str:
    return _address(value, where, 4, "an IPv4 address")


def _ipv6(value: object, where: str) -> str:
    return _address(value, where, 6, "an IPv6 address")


def _netmask(value: object, where: str) -> str:
    mask = _address(value, where, 4, "an IPv4 netmask such as 255.255.0.0")
    try:
        IPv4Network(f"0.0.0.0/{mask}")
    except ValueError:
        _fail(where, "an IPv4 netmask such as 255.255.0.0", value)
    return mask


def _host(value: object, where: str) -> str:
    expected = "a host name or IP address"
    if isinstance(value, str) and ":" in value:
        return _address(value, where, 6, expected)
    if not isinstance(value, str) or not _HOST_NAME.fullmatch(value):
        _fail(where, expected, value)
    return value


def _interface(value: object, where: str) -> str:
    expected = f"an interface name of 1-{IFNAMSIZ} characters without '/', ':' or spaces"
    if not isinstance(value, str) or not 0 < len(value) <= IFNAMSIZ or value in (".", ".."):
        _fail(where, expected, value)
    if any(char in "/:" or char.isspace() or not char.isprintable() for char in value):
        _fail(where, expected, value)
    return value


def _interface_or_none(value: object, where: str) -> str:
    return "" if value == "" else _interface(value, where)


def _bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    _fail(where, "true or false", value)


def _seconds(value: object, where: str, *, zero_ok: bool = False) -> float:
    expected = "a number of seconds >= 0 (0: off)" if zero_ok else "a number of seconds > 0"
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number < 0 or (number == 0 and not zero_ok):
        _fail(where, expected, value)
    return number


def _seconds_or_off(value: object, where: str) -> float:
    return _seconds(value, where, zero_ok=True)


def _dataplane_mode(value: object, where: str) -> str:
    if value not in DATAPLANE_MODES:
        _fail(where, " or ".join(DATAPLANE_MODES), value)
    return str(value)


DATAPLANE_MODES = ("tun", "kernel", "auto")


# ---------------------------------------------------------------- what is read where

NETCFG_KEYS: dict[str, tuple[str, Parser]] = {
    "NodePublicAddress": ("node_public_address", _ip),
    "NodePublicPort": ("node_public_port", _port),
    "ClusterUrl": ("cluster_url", _host),
    "ClusterMqttPort": ("cluster_mqtt_port", _port),
    "DefaultInterface": ("default_interface", _interface_or_none),
    "Debug": ("debug", _bool),
    "PublicIPNetworking": ("public_ip_networking", _bool),
    "MqttCert": ("mqtt_cert", _string),
    "MqttKey": ("mqtt_key", _string),
    "MqttCa": ("mqtt_ca", _string),
    "MqttUsername": ("mqtt_username", _string),
    "MqttPassword": ("mqtt_password", _string),
    "DataplaneMode": ("dataplane_mode", _dataplane_mode),
}

TUNCFG_KEYS: dict[str, tuple[str, Parser]] = {
    "HostTunnelDeviceName": ("device_name", _interface),
    "TunnelIP": ("tunnel_ip", _ipv4),
    "ProxySubnetwork": ("proxy_subnetwork", _ipv4),
    "ProxySubnetworkMask": ("proxy_subnetwork_mask", _netmask),
    "TunnelPort": ("tunnel_port", _port),
    "MTUsize": ("mtu", _mtu),
    "TunNetIPv6": ("tun_net_ipv6", _ipv6),
    "ProxySubnetworkIPv6": ("proxy_subnetwork_ipv6", _ipv6),
    "ProxySubnetworkIPv6Prefix": ("proxy_subnetwork_ipv6_prefix", _prefix_v6),
}

# Every NetConfig field but `tun`, with its parser: what `overrides` may set.
FIELD_PARSERS: dict[str, Parser] = {
    **dict(NETCFG_KEYS.values()),
    "container_mtu": _mtu,
    "socket_path": _path,
    "tcp_port": _port_or_off,
    "state_file": _path,
    "address_watch_interval": _seconds_or_off,
    "reconcile_interval": _seconds,
    "interest_timeout": _seconds,
    "table_query_timeout": _seconds,
}

ENV_VARS: dict[str, str] = {
    "NODE_PUBLIC_ADDRESS": "node_public_address",  # address peers send tunnel traffic to
    "NODE_PUBLIC_PORT": "node_public_port",  # UDP port peers send tunnel traffic to
    "CLUSTER_URL": "cluster_url",  # cluster broker host (/register may still override it)
    "CLUSTER_MQTT_PORT": "cluster_mqtt_port",
    "DEFAULT_INTERFACE": "default_interface",  # uplink when there are several default routes
    "TUN_MTU_SIZE": "container_mtu",  # bridge and veth MTU (upstream's variable)
    "NETMANAGER_SOCKET": "socket_path",  # unix socket of the node engine API
    "NETMANAGER_PORT": "tcp_port",  # also serve the API on this TCP port (0: no)
    "NETMANAGER_STATE_FILE": "state_file",  # deployed instances, re-adopted on restart
    "MQTT_USERNAME": "mqtt_username",
    "MQTT_PASSWORD": "mqtt_password",
    "MQTT_CA_FILE": "mqtt_ca",
    "MQTT_CERT_FILE": "mqtt_cert",
    "MQTT_KEY_FILE": "mqtt_key",
    "ADDRESS_WATCH_INTERVAL": "address_watch_interval",  # public address check (0: off)
    "DATAPLANE_MODE": "dataplane_mode",  # tun | kernel | auto
}


# ---------------------------------------------------------------- loading


def load_config(
    config_dir: str | None = None,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, object] | None = None,
) -> NetConfig:
    """Read the files, then the environment, then `overrides`; ConfigError on bad values."""
    directory = Path(config_dir or env.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR)
    values = _read_file(directory / NETCFG, NETCFG_KEYS, required=True)
    tun_path = directory / TUNCFG
    tun_values = _fix_proxy_subnets(_read_file(tun_path, TUNCFG_KEYS, required=False), tun_path)
    values.update(_from_env(env))
    values.update(_from_overrides(overrides or {}))
    return NetConfig(**values, tun=TunConfig(**tun_values))


def _read_file(
    path: Path, keys: dict[str, tuple[str, Parser]], *, required: bool
) -> dict[str, Any]:
    """Field name -> parsed value for every key the file sets; {} if it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            log.warning("config file not found, using defaults", path=str(path))
        return {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {err.start})") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{path}: invalid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    values = {}
    for key, value in data.items():
        if key not in keys:
            log.info("unknown config key ignored", path=str(path), key=key)
        elif value is not None:
            name, parser = keys[key]
            values[name] = parser(value, f"{path}: {key}")
    return values


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for variable, name in ENV_VARS.items():
        raw = env.get(variable)
        if raw:
            values[name] = FIELD_PARSERS[name](raw, f"env {variable}")
    return values


def _from_overrides(overrides: Mapping[str, object]) -> dict[str, Any]:
    values = {}
    for name, raw in overrides.items():
        if name not in FIELD_PARSERS:
            known = ", ".join(sorted(FIELD_PARSERS))
            raise ConfigError(f"unknown option {name!r} (known: {known})")
        if raw is not None:
            values[name] = FIELD_PARSERS[name](raw, f"option {name}")
    return values


def _fix_proxy_subnets(values: dict[str, Any], path: Path) -> dict[str, Any]:
    """Replace proxy subnets that miss the platform's service range (upstream's fcef::/21)."""
    defaults = TunConfig()
    address = values.get("proxy_subnetwork", defaults.proxy_subnetwork)
    mask = values.get("proxy_subnetwork_mask", defaults.proxy_subnetwork_mask)
    configured_v4 = IPv4Network(f"{address}/{mask}", strict=False)
    if not SERVICE_V4.subnet_of(configured_v4):
        _warn_replaced(path, configured_v4, SERVICE_V4)
        values["proxy_subnetwork"] = defaults.proxy_subnetwork
        values["proxy_subnetwork_mask"] = defaults.proxy_subnetwork_mask
    address = values.get("proxy_subnetwork_ipv6", defaults.proxy_subnetwork_ipv6)
    prefix = values.get("proxy_subnetwork_ipv6_prefix", defaults.proxy_subnetwork_ipv6_prefix)
    configured_v6 = IPv6Network(f"{address}/{prefix}", strict=False)
    if not SERVICE_V6.subnet_of(configured_v6):
        _warn_replaced(path, configured_v6, SERVICE_V6)
        values["proxy_subnetwork_ipv6"] = defaults.proxy_subnetwork_ipv6
        values["proxy_subnetwork_ipv6_prefix"] = defaults.proxy_subnetwork_ipv6_prefix
    return values


def _warn_replaced(path: Path, configured: IPv4Network | IPv6Network, used: object) -> None:
    log.warning(
        f"{path}: proxy subnet {configured} does not contain the service IPs; using {used}",
        path=str(path),
        configured=str(configured),
        used=str(used),
    )


# ---------------------------------------------------------------- the command line


def _checked(name: str) -> s.Parser:
    """A settings-table parser that applies the field's own parser (same rules as files)."""

    def parse(text: str) -> Any:
        try:
            return FIELD_PARSERS[name](text, "")
        except ConfigError as err:
            return _reraise(err)

    return parse


def _reraise(err: ConfigError) -> NoReturn:
    reason = str(err).strip()
    raise ValueError(reason.rpartition(", got ")[0] or reason) from None


def _row(env: str, flag: str, meaning: str, *, secret: bool = False) -> s.Setting:
    """A row for the NetConfig field `ENV_VARS[env]`; its default is the file's, else built in."""
    name = ENV_VARS[env]
    default = getattr(NetConfig(), name)
    shown = "" if default in ("", 0) and not isinstance(default, bool) else default
    keys = [key for key, (field_name, _) in NETCFG_KEYS.items() if field_name == name]
    source = f"netcfg.json {keys[0]}, else " if keys else ""
    default_text = f"(default: {source}{shown!s})" if str(shown) else f"(default: {source}unset)"
    return s.Setting(env, flag, _checked(name), None, f"{meaning} {default_text}", secret)


SETTINGS = s.SettingsTable(
    "net-manager",
    "Oakestra's node net manager: container networking, service IPs and the tunnel.\n"
    "Subcommands: run (the daemon), status (ask it), cleanup (remove leftovers).",
    [
        s.Setting(
            CONFIG_DIR_ENV,
            "--config-dir",
            s.text,
            DEFAULT_CONFIG_DIR,
            "directory of netcfg.json and tuncfg.json",
        ),
        _row(
            "NODE_PUBLIC_ADDRESS",
            "--node-public-address",
            "address peers tunnel to (0.0.0.0: the default route's)",
        ),
        _row("NODE_PUBLIC_PORT", "--node-public-port", "UDP port of the tunnel"),
        _row("CLUSTER_URL", "--cluster-url", "cluster broker host (/register may name another)"),
        _row("CLUSTER_MQTT_PORT", "--cluster-mqtt-port", "cluster broker port"),
        _row("MQTT_USERNAME", "--mqtt-username", "MQTT user name"),
        _row("MQTT_PASSWORD", "--mqtt-password", "MQTT password", secret=True),
        _row("MQTT_CA_FILE", "--mqtt-ca", "CA certificate file: TLS to the broker"),
        _row("MQTT_CERT_FILE", "--mqtt-cert", "client certificate file"),
        _row("MQTT_KEY_FILE", "--mqtt-key", "client key file"),
        _row("DEFAULT_INTERFACE", "--default-interface", "uplink when several default routes"),
        _row("TUN_MTU_SIZE", "--mtu", "MTU of the bridge and the container interfaces"),
        _row("NETMANAGER_SOCKET", "--socket", "unix socket of the node engine API"),
        _row("NETMANAGER_PORT", "--port", "also serve the API on 127.0.0.1:PORT (0: no)"),
        _row(
            "NETMANAGER_STATE_FILE", "--state-file", "state file: instances re-adopted on restart"
        ),
        _row(
            "ADDRESS_WATCH_INTERVAL",
            "--address-watch-interval",
            "seconds between public address checks (0: off)",
        ),
        *s.log_rows(),
        s.Setting(
            "STARTUP_TIMEOUT",
            "--startup-timeout",
            s.number(0.1),
            "5",
            "run: seconds the start-up check waits for the cluster's broker; refused "
            "credentials or a failed TLS handshake stop the start, an unreachable broker does not",
        ),
    ],
    version=metadata.version("oakestra-net-manager"),
)
