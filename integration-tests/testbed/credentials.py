"""The local cluster's secrets, made fresh for every run: broker users, ACL, API token.

`RunSecrets.create(directory, node_ids)` writes into `directory` (mode 0700):
- `passwd`: one Mosquitto user per node (its node id) and one for the cluster service
  manager, each with a random password (`oakestra_net.broker_auth`);
- `acl`: the shipped `mosquitto/acl`;
- `mosquitto.conf`: the shipped `mosquitto/mosquitto.conf` with those two paths, plus a
  second listener on 127.0.0.1 of the infra namespace only, without authentication:
  the operator's console (watching topics, the tests' probes), which nothing on the
  underlay can reach. The nodes and the cluster use the secured listener.
It also holds the bearer token the root, the cluster and the orchestrator driver share.
What each process is given is the cluster's business.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from oakestra_net import broker_auth

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONF = REPO / "mosquitto" / "mosquitto.conf"
SHIPPED_ACL = REPO / "mosquitto" / "acl"
CONSOLE_PORT = 10004  # the broker's local listener, 127.0.0.1 in the infra namespace


def broker_config(shipped: str, passwd: Path, acl: Path, console_port: int) -> str:
    """The shipped configuration with our paths, each listener with its own settings."""
    text = shipped.replace("/mosquitto/config/passwd", str(passwd))
    text = text.replace("/mosquitto/config/acl", str(acl))
    # Started as root, Mosquitto would switch to its own user, which cannot read our
    # run directory (mode 0700, like the test fixture's broker it stays root).
    run_as = "user root\n" if os.geteuid() == 0 else ""
    return (
        f"per_listener_settings true\n{run_as}"
        f"{text.rstrip()}\n\n"
        "# The operator's console: only processes inside the infra namespace reach it.\n"
        f"listener {console_port} 127.0.0.1\n"
        "allow_anonymous true\n"
    )


@dataclass(frozen=True)
class RunSecrets:
    directory: Path
    api_token: str
    cluster_password: str
    node_passwords: dict[str, str]

    @property
    def cluster_user(self) -> str:
        return broker_auth.CLUSTER_USER

    @property
    def broker_config(self) -> Path:
        return self.directory / "mosquitto.conf"

    @classmethod
    def create(cls, directory: Path, node_ids: list[str]) -> RunSecrets:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        passwd, acl = directory / "passwd", directory / "acl"
        passwd.unlink(missing_ok=True)
        run = cls(
            directory,
            api_token=secrets.token_urlsafe(32),
            cluster_password=broker_auth.new_password(),
            node_passwords={node_id: broker_auth.new_password() for node_id in node_ids},
        )
        broker_auth.set_password(passwd, run.cluster_user, run.cluster_password)
        for node_id, password in run.node_passwords.items():
            broker_auth.set_password(passwd, node_id, password)
        acl.write_text(SHIPPED_ACL.read_text())
        config = broker_config(SHIPPED_CONF.read_text(), passwd, acl, CONSOLE_PORT)
        run.broker_config.write_text(config)
        return run
