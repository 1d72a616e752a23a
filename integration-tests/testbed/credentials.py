"""The local cluster's secrets, made fresh for every run: broker users, ACL, TLS, API token.

`RunSecrets.create(directory, node_ids, broker_ips)` writes into `directory` (mode 0700):
- `passwd`: one Mosquitto user per node (its node id) and one for the cluster service
  manager, each with a random password (`oakestra_net.broker_auth`);
- `acl`: the shipped `mosquitto/acl`;
- a CA of this run (`pki`): `ca.crt`, the broker's `server.crt`/`.key` for
  `broker_ips`, and `cluster_net.crt`/`.key` (the file names upstream's MQTT_CERT
  directory has) for the cluster service manager;
- `mosquitto.conf`: the shipped `mosquitto/mosquitto.conf` with those paths and TLS on
  its listener (so passwords never cross the underlay in clear), plus a second listener
  on 127.0.0.1 of the infra namespace only, without authentication: the operator's
  console (watching topics, the tests' probes), which nothing on the underlay reaches.
With `open_broker` the broker is instead upstream Oakestra's default (anonymous, no ACL,
retained messages kept), for tests of what nodes do on such a broker.
It also holds the bearer token the root, the cluster and the orchestrator driver share.
What each process is given is the cluster's business.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from oakestra_net import broker_auth
from testbed.pki import issue_run_certificates

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONF = REPO / "mosquitto" / "mosquitto.conf"
SHIPPED_ACL = REPO / "mosquitto" / "acl"
CONSOLE_PORT = 10004  # the broker's local listener, 127.0.0.1 in the infra namespace


def broker_config(shipped: str, directory: Path, console_port: int, *, tls: bool = True) -> str:
    """The shipped configuration with our paths and TLS, each listener with its settings."""
    text = shipped.replace("/mosquitto/config/passwd", str(directory / "passwd"))
    text = text.replace("/mosquitto/config/acl", str(directory / "acl"))
    if tls:
        files = (("cafile", "ca.crt"), ("certfile", "server.crt"), ("keyfile", "server.key"))
        lines = "\n".join(f"{option} {directory / name}" for option, name in files)
        listener = re.compile(r"^(listener \d+)$", re.M)
        text = listener.sub(lambda m: f"{m.group(1)}\n{lines}", text, count=1)
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


OPEN_BROKER = """\
# Upstream Oakestra's default broker: anonymous, no ACL, retained messages kept.
listener 10003
allow_anonymous true
persistence false
set_tcp_nodelay true
log_dest stdout
"""


@dataclass(frozen=True)
class RunSecrets:
    directory: Path
    api_token: str
    cluster_password: str
    node_passwords: dict[str, str]
    open_broker: bool = False

    @property
    def cluster_user(self) -> str:
        return broker_auth.CLUSTER_USER

    @property
    def broker_config(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    @classmethod
    def create(
        cls, directory: Path, node_ids: list[str], broker_ips: list[str], *, open_broker=False
    ) -> RunSecrets:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        passwd, acl = directory / "passwd", directory / "acl"
        passwd.unlink(missing_ok=True)
        run = cls(
            directory,
            api_token=secrets.token_urlsafe(32),
            cluster_password=broker_auth.new_password(),
            node_passwords={node_id: broker_auth.new_password() for node_id in node_ids},
            open_broker=open_broker,
        )
        broker_auth.set_password(passwd, run.cluster_user, run.cluster_password)
        for node_id, password in run.node_passwords.items():
            broker_auth.set_password(passwd, node_id, password)
        acl.write_text(SHIPPED_ACL.read_text())
        issue_run_certificates(directory, broker_ips, {"cluster_net": run.cluster_user})
        shipped = OPEN_BROKER if open_broker else SHIPPED_CONF.read_text()
        config = broker_config(shipped, directory, CONSOLE_PORT, tls=not open_broker)
        run.broker_config.write_text(config)
        return run
