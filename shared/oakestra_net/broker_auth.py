"""Who may do what on the cluster's Mosquitto: the topic ACL and the password file.

Every client authenticates. A node's user name is its node id; the broker replaces the
client id with the user name (`use_username_as_clientid true`), so nobody can take
over another's session, and the ACL patterns (`%u`) let a node publish only under
`nodes/<its id>/net/` and read only its own results and the job updates. The cluster
service manager (user `cluster-service-manager`; one user per process when several
serve a cluster) reads every node's topics and publishes the results and job updates.
In Oakestra's mutual-TLS mode (`use_identity_as_username true`) the same ACL applies
with the certificate's common name as the user name.

`acl_text` is pure (the shipped `mosquitto/acl` is its output); `set_password` runs
`mosquitto_passwd`. As a command:

    python -m oakestra_net.broker_auth add-node  <password file> <node id>
    python -m oakestra_net.broker_auth add-cluster <password file> [user]
    python -m oakestra_net.broker_auth acl [--cluster-user U ...] > acl

`add-*` create the file if needed, generate a password (or take `--password`), and
print what the client needs (for a node: the `netcfg.json` keys).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from oakestra_net import topics

CLUSTER_USER = "cluster-service-manager"

_HEADER = """\
# Topic ACL of the cluster broker (mosquitto acl_file), written by
# `python -m oakestra_net.broker_auth acl`. %u is the authenticated user name: for a
# node its node id (user/password), or its certificate's common name (mutual TLS).
# Anything not granted here is denied.
"""

_NODE_RULES = """\
# A node publishes only under its own prefix, reads only its own results and job updates.
pattern write nodes/%u/net/subnet
pattern write nodes/%u/net/tablequery/request
pattern write nodes/%u/net/service/#
pattern write nodes/%u/net/interest/#
pattern read nodes/%u/net/subnetwork/result
pattern read nodes/%u/net/tablequery/result
pattern read jobs/+/updates_available
"""


class BrokerAuthError(RuntimeError):
    """A password file that could not be written; the message says why."""


def cluster_rules(user: str) -> str:
    """The cluster service manager's block: read the nodes, answer them, announce jobs."""
    check_user(user)
    return (
        f"user {user}\n"
        "topic read nodes/+/net/#\n"
        "topic write nodes/+/net/subnetwork/result\n"
        "topic write nodes/+/net/tablequery/result\n"
        "topic write jobs/+/updates_available\n"
    )


def acl_text(cluster_users: Sequence[str] = (CLUSTER_USER,)) -> str:
    """The whole ACL file: one block per cluster user, then the node patterns for all."""
    blocks = [
        _HEADER,
        "# The cluster service manager (one user per process serving the cluster).",
        *(cluster_rules(user) for user in cluster_users),
        _NODE_RULES,
    ]
    # `pattern` lines apply to every user wherever they stand, `topic` lines only to the
    # `user` above them.
    return "\n".join(blocks)


def check_user(user: str) -> None:
    """Raise ValueError unless `user` can be a broker user name and a topic level."""
    try:
        topics.node_topic(user, topics.SUBNET)
    except topics.InvalidTopic as err:
        raise ValueError(f"broker user {user!r}: {err}") from None
    if ":" in user or user.strip() != user or user.startswith("#"):
        raise ValueError(f"broker user {user!r} must not contain ':' or blanks")


def new_password() -> str:
    return secrets.token_urlsafe(24)


def set_password(password_file: Path, user: str, password: str) -> None:
    """Add or replace `user` in a Mosquitto password file (created 0600 if missing)."""
    check_user(user)
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.access(tool, os.X_OK):
        raise BrokerAuthError("mosquitto_passwd not found (apt install mosquitto)")
    path = Path(password_file)
    if not path.exists():
        path.touch(mode=0o600)
    result = subprocess.run(
        [tool, "-b", str(path), user, password], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BrokerAuthError(f"mosquitto_passwd {path} {user}: {result.stderr.strip()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oakestra_net.broker_auth", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    node = commands.add_parser("add-node", help="a credential for one node (user = node id)")
    node.add_argument("password_file", type=Path)
    node.add_argument("node_id")
    node.add_argument("--password", help="default: a new random one")
    cluster = commands.add_parser("add-cluster", help="a credential for a cluster process")
    cluster.add_argument("password_file", type=Path)
    cluster.add_argument("user", nargs="?", default=CLUSTER_USER)
    cluster.add_argument("--password", help="default: a new random one")
    acl = commands.add_parser("acl", help="print the ACL file")
    acl.add_argument("--cluster-user", action="append", dest="cluster_users")
    args = parser.parse_args(argv)
    try:
        if args.command == "acl":
            sys.stdout.write(acl_text(args.cluster_users or (CLUSTER_USER,)))
            return 0
        user = args.node_id if args.command == "add-node" else args.user
        password = args.password or new_password()
        set_password(args.password_file, user, password)
    except (ValueError, BrokerAuthError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "add-node":
        print(json.dumps({"MqttUsername": user, "MqttPassword": password}, indent=2))
    else:
        print(f"MQTT_USERNAME={user}\nMQTT_PASSWORD={password}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
