"""Settings of the cluster service manager, read from the environment (reference §2.2).

Upstream's variables keep their names and meaning (`MY_PORT`, `MQTT_BROKER_URL`,
`MQTT_BROKER_PORT`, `MQTT_CERT`, `CLUSTER_SERVICE_KEYFILE_PASSWORD`,
`ROOT_SERVICE_MANAGER_URL`, `ROOT_SERVICE_MANAGER_PORT`); the others are ours
(`NET_API_TOKEN`: see `oakestra_net.api_token`). A bad
value raises `ConfigError` naming the variable. The MongoDB variables are read by
`oakestra_net.store`; turning settings into clients is the app factory's job.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from oakestra_net import api_token
from oakestra_net.mqtt import MqttConfig

DEFAULT_PORT = 10110
DEFAULT_ROOT_PORT = 10099
DEFAULT_BROKER_PORT = 10003
CERT_FILES = ("ca.crt", "cluster_net.crt", "cluster_net.key")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    port: int = DEFAULT_PORT
    root_url: str = "0.0.0.0"
    root_port: int = DEFAULT_ROOT_PORT
    root_timeout: float = 5.0
    root_attempts: int = 3
    root_backoff: float = 0.2
    root_workers: int = 8
    retry_max_age: float = 600.0
    mqtt_host: str = "localhost"
    mqtt_port: int = DEFAULT_BROKER_PORT
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_cert_dir: str | None = None
    mqtt_key_password: str | None = None
    mqtt_client_id: str = field(default_factory=lambda: default_client_id())
    mqtt_workers: int = 8
    mqtt_shared: bool | None = None  # None: shared iff the store is a real MongoDB
    cluster_id: str | None = None
    cluster_address: str | None = None
    cluster_port: int | None = None
    api_token: str | None = field(default=None, repr=False)

    @property
    def root_base_url(self) -> str:
        """`http://host:port` of the root; a URL with a scheme is used as given."""
        if "://" in self.root_url:
            return self.root_url.rstrip("/")
        host = self.root_url.strip("[]")
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.root_port}"

    def mqtt_config(self) -> MqttConfig:
        tls: dict[str, str | None] = {}
        if self.mqtt_cert_dir:
            ca, cert, key = (os.path.join(self.mqtt_cert_dir, name) for name in CERT_FILES)
            tls = {"ca_file": ca, "cert_file": cert, "key_file": key}
            tls["key_password"] = self.mqtt_key_password
        return MqttConfig(
            host=self.mqtt_host,
            port=self.mqtt_port,
            client_id=self.mqtt_client_id,
            username=self.mqtt_username,
            password=self.mqtt_password,
            keepalive=10,
            min_reconnect_delay=0.5,
            max_reconnect_delay=30,
            **tls,
        )

    @property
    def self_registration(self) -> tuple[str, str, int] | None:
        """(cluster_id, cluster_address, cluster_port) when both id and address are set."""
        if not (self.cluster_id and self.cluster_address):
            return None
        return self.cluster_id, self.cluster_address, self.cluster_port or self.port

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        reader = _EnvReader(env)
        settings = cls(
            port=reader.port("MY_PORT", DEFAULT_PORT),
            root_url=reader.text("ROOT_SERVICE_MANAGER_URL") or "0.0.0.0",
            root_port=reader.port("ROOT_SERVICE_MANAGER_PORT", DEFAULT_ROOT_PORT),
            root_timeout=reader.number("ROOT_TIMEOUT", 5.0),
            root_attempts=int(reader.number("ROOT_ATTEMPTS", 3, minimum=1)),
            root_backoff=reader.number("ROOT_BACKOFF", 0.2, minimum=0),
            root_workers=int(reader.number("ROOT_WORKERS", 8, minimum=1)),
            retry_max_age=reader.number("ROOT_RETRY_MAX_AGE", 600.0),
            mqtt_host=(reader.text("MQTT_BROKER_URL") or "localhost").strip("[]"),
            mqtt_port=reader.port("MQTT_BROKER_PORT", DEFAULT_BROKER_PORT),
            mqtt_username=reader.text("MQTT_USERNAME"),
            mqtt_password=reader.text("MQTT_PASSWORD"),
            mqtt_cert_dir=reader.cert_dir("MQTT_CERT"),
            mqtt_key_password=reader.text("CLUSTER_SERVICE_KEYFILE_PASSWORD"),
            mqtt_client_id=reader.text("MQTT_CLIENT_ID") or default_client_id(),
            mqtt_workers=int(reader.number("MQTT_WORKERS", 8, minimum=1)),
            mqtt_shared=reader.flag("MQTT_SHARED_SUBSCRIPTION"),
            cluster_id=reader.text("CLUSTER_ID"),
            cluster_address=reader.text("CLUSTER_ADDRESS"),
            cluster_port=reader.port("CLUSTER_PORT", None),
            api_token=reader.token(),
        )
        if settings.mqtt_password and not settings.mqtt_username:
            raise ConfigError("MQTT_PASSWORD is set but MQTT_USERNAME is not")
        return settings


def default_client_id() -> str:
    """Unique per process, so several cluster service managers can share one broker."""
    return f"cluster-service-manager-{socket.gethostname()[:32]}-{uuid.uuid4().hex[:8]}"


class _EnvReader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def port(self, name: str, default: int | None) -> int | None:
        text = self.text(name)
        if text is None:
            return default
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise ConfigError(f"{name}={text!r} is not a TCP port (1-65535)")
        return int(text)

    def number(self, name: str, default: float, *, minimum: float = 1e-3) -> float:
        text = self.text(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r} is not a number") from None
        if not value >= minimum or value == float("inf"):
            raise ConfigError(f"{name}={text!r} must be a finite number >= {minimum}")
        return value

    def flag(self, name: str) -> bool | None:
        text = self.text(name)
        if text is None:
            return None
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={text!r} is not a boolean (true/false)")

    def token(self) -> str | None:
        try:
            return api_token.token_from_env(self.env)
        except api_token.TokenError as err:
            raise ConfigError(str(err)) from None

    def cert_dir(self, name: str) -> str | None:
        path = self.text(name)
        if path is None:
            return None
        missing = [f for f in CERT_FILES if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise ConfigError(f"{name}={path!r} lacks {', '.join(missing)}")
        return path
