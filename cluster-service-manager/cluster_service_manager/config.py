"""Settings of the cluster service manager: the table of every setting, and `Settings`.

`SETTINGS` has one row per setting (variable, flag, parser, default, meaning); Oakestra's
variables keep their names and meaning (`MY_PORT`, `MQTT_BROKER_URL`, `MQTT_BROKER_PORT`,
`MQTT_CERT`, `CLUSTER_SERVICE_KEYFILE_PASSWORD`, `ROOT_SERVICE_MANAGER_URL`,
`ROOT_SERVICE_MANAGER_PORT`, `CLUSTER_MONGO_URL`, `CLUSTER_MONGO_PORT`); the others are
ours. A bad value raises `ConfigError` naming the variable or flag. `Settings` holds the
values the app uses; the MongoDB variables are read by `oakestra_net.store`, the gunicorn
ones by the console script. Turning settings into clients is the app factory's job.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import metadata
from typing import Any

from oakestra_net import api_token
from oakestra_net import settings as s
from oakestra_net.mqtt import MqttConfig
from oakestra_net.settings import ConfigError

DEFAULT_PORT = 10110
DEFAULT_ROOT_PORT = 10099
DEFAULT_BROKER_PORT = 10003
CERT_FILES = ("ca.crt", "cluster_net.crt", "cluster_net.key")

__all__ = ["SETTINGS", "ConfigError", "Settings", "default_client_id"]


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
        return cls.from_values(SETTINGS.values(env))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from `SETTINGS.values(...)`: unset values keep the field defaults."""
        if values.get("mqtt_password") and not values.get("mqtt_username"):
            raise ConfigError("MQTT_PASSWORD is set but MQTT_USERNAME is not")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})


def default_client_id() -> str:
    """Unique per process, so several cluster service managers can share one broker."""
    return f"cluster-service-manager-{socket.gethostname()[:32]}-{uuid.uuid4().hex[:8]}"


SETTINGS = s.SettingsTable(
    "cluster-service-manager",
    "Oakestra's cluster service manager: MQTT endpoint of the nodes, cache of the root's tables.",
    [
        s.Setting("MY_PORT", "--port", s.port, str(DEFAULT_PORT), "port of the HTTP API"),
        s.Setting(
            "ROOT_SERVICE_MANAGER_URL",
            "--root-url",
            s.text,
            "0.0.0.0",
            "root service manager host, or a full http(s):// URL",
        ),
        s.Setting(
            "ROOT_SERVICE_MANAGER_PORT",
            "--root-port",
            s.port,
            str(DEFAULT_ROOT_PORT),
            "root service manager port",
        ),
        s.Setting("MQTT_BROKER_URL", "--mqtt-host", s.host, "localhost", "MQTT broker host"),
        s.Setting(
            "MQTT_BROKER_PORT", "--mqtt-port", s.port, str(DEFAULT_BROKER_PORT), "MQTT broker port"
        ),
        s.Setting(
            "MQTT_CERT",
            "--mqtt-cert-dir",
            s.directory_with(*CERT_FILES),
            None,
            f"directory with {', '.join(CERT_FILES)}: TLS to the broker",
        ),
        s.Setting(
            "CLUSTER_SERVICE_KEYFILE_PASSWORD",
            "--mqtt-key-password",
            s.text,
            None,
            "password of cluster_net.key",
            secret=True,
        ),
        *s.store_rows("cluster"),
        s.Setting(
            api_token.ENV_VAR,
            "--api-token",
            api_token.parse_token,
            None,
            "bearer token required on /api/net/ (unset: open, logged loudly)",
            secret=True,
        ),
        s.Setting("MQTT_USERNAME", "--mqtt-username", s.text, None, "MQTT user name"),
        s.Setting("MQTT_PASSWORD", "--mqtt-password", s.text, None, "MQTT password", secret=True),
        s.Setting(
            "MQTT_CLIENT_ID",
            "--mqtt-client-id",
            s.text,
            None,
            "MQTT client id (default: unique per process)",
        ),
        s.Setting(
            "MQTT_WORKERS",
            "--mqtt-workers",
            s.integer(1),
            "8",
            "threads handling the nodes' messages",
        ),
        s.Setting(
            "MQTT_SHARED_SUBSCRIPTION",
            "--mqtt-shared",
            s.boolean,
            None,
            "share the nodes' topics between workers (default: with MongoDB)",
        ),
        s.Setting("ROOT_TIMEOUT", "--root-timeout", s.number(), "5", "seconds per root call"),
        s.Setting("ROOT_ATTEMPTS", "--root-attempts", s.integer(1), "3", "attempts per root call"),
        s.Setting("ROOT_BACKOFF", "--root-backoff", s.number(0), "0.2", "seconds between attempts"),
        s.Setting(
            "ROOT_WORKERS", "--root-workers", s.integer(1), "8", "threads doing work at the root"
        ),
        s.Setting(
            "ROOT_RETRY_MAX_AGE",
            "--retry-max-age",
            s.number(),
            "600",
            "seconds a step for the root is retried before it is dropped",
        ),
        s.Setting(
            "CLUSTER_ID",
            "--cluster-id",
            s.text,
            None,
            "standalone: register at the root under this id (with CLUSTER_ADDRESS)",
        ),
        s.Setting(
            "CLUSTER_ADDRESS",
            "--cluster-address",
            s.text,
            None,
            "standalone: address the root reaches this cluster at",
        ),
        s.Setting(
            "CLUSTER_PORT",
            "--cluster-port",
            s.port,
            None,
            "standalone: port the root reaches this cluster at (default: MY_PORT)",
        ),
        *s.gunicorn_rows(default_workers=1),
        *s.startup_rows(),
        *s.log_rows(),
    ],
    version=metadata.version("oakestra-cluster-service-manager"),
    epilog="Exit status: 0 after --help/--version or a clean stop, 2 for a bad argument or\n"
    "value, 1 when MongoDB or the MQTT broker does not answer or refuses at start.",
)
