"""Secrets of the compose broker: made on first start, kept in volumes, renewed when due.

docker-compose.yml runs `python -m oakestra_net.broker_init init` once before the broker
starts (service `broker_init`, on the root service manager's image, which has the
`cryptography` package). Every run is idempotent: what exists and is still right is
kept, so certificates, and with them the nodes' trust, survive restarts.

- `<pki>/ca.crt`, `ca.key`: the broker's CA (its key never leaves this directory);
- `<broker>/ca.crt`, `server.crt`, `server.key`, `passwd`: what Mosquitto reads; the
  server certificate names `mqtt`, `localhost`, 127.0.0.1, ::1 and every name in
  MQTT_TLS_NAMES (how remote nodes reach the broker); it is issued again when a name
  is missing, the CA changed or it expires within 30 days;
- `<cluster>/ca.crt`, `cluster_net.crt`, `cluster_net.key`: the cluster service
  manager's MQTT_CERT directory (upstream's file names);
- `<ca>/ca.crt`: the only file the nodes get;
- `passwd`: the user `cluster-service-manager` with CLUSTER_MQTT_PASSWORD (required),
  and NODE_MQTT_USERNAME with NODE_MQTT_PASSWORD when both are set (the compose
  file's own net manager). Users added by `add-node` are kept.

Commands: `init`; `add-node <node id> [--password P]` (prints the node's netcfg.json
keys; the broker rereads the file on SIGHUP); `remove-node <node id>`; `ca` (prints the
CA certificate for a node elsewhere); `import-tls <dir>` (the operator's own `ca.crt`,
`server.crt`, `server.key`, `cluster_net.crt`, `cluster_net.key`: kept as given, never
issued again here). Files of the broker belong to MOSQUITTO_UID (1883, the uid of
eclipse-mosquitto, which docker-compose.yml runs the broker as), those of the cluster to
CLUSTER_UID (10001, the user of our images); private keys and the password file are 0600.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from oakestra_net import broker_auth, broker_pki, mosquitto_passwd

DEFAULT_NAMES = ("mqtt", "localhost", "127.0.0.1", "::1")
RENEW_BEFORE = datetime.timedelta(days=30)
CLUSTER_COMMON_NAME = broker_auth.CLUSTER_USER
SERVER_COMMON_NAME = "oakestra-net cluster broker"
TLS_FILES = ("ca.crt", "server.crt", "server.key", "cluster_net.crt", "cluster_net.key")


class InitError(RuntimeError):
    """Something the operator must fix; the message names the variable or file."""


@dataclass(frozen=True)
class Layout:
    """Where each consumer's files go, and whom they belong to (None: leave the owner)."""

    pki: Path = Path("/var/lib/oakestra/broker-pki")
    broker: Path = Path("/broker")
    cluster: Path = Path("/cluster-tls")
    ca: Path = Path("/broker-ca")
    broker_uid: int | None = 1883
    cluster_uid: int | None = 10001

    @property
    def passwd(self) -> Path:
        return self.broker / "passwd"


def _write(path: Path, data: bytes, uid: int | None, mode: int) -> bool:
    """Replace `path` atomically (readers never see half a file); False if unchanged."""
    if path.is_file() and path.read_bytes() == data:
        _own(path, uid, mode)
        return False
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    _own(partial, uid, mode)
    partial.replace(path)
    return True


def _own(path: Path, uid: int | None, mode: int) -> None:
    os.chmod(path, mode)
    if uid is not None and os.geteuid() == 0:
        os.chown(path, uid, uid)


def _directory(path: Path, uid: int | None, mode: int = 0o750) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _own(path, uid, mode)


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def server_names(extra: str) -> list[str]:
    """The broker's names: the defaults plus MQTT_TLS_NAMES (comma or blank separated)."""
    names = list(DEFAULT_NAMES)
    names += [n for n in extra.replace(",", " ").split() if n not in names]
    return names


def _needs_issue(cert: bytes | None, ca_changed: bool, names: Iterable[str] = ()) -> bool:
    if cert is None or ca_changed:
        return True
    if broker_pki.expires_within(cert, RENEW_BEFORE):
        return True
    return not set(names) <= broker_pki.server_names(cert)


def ensure_tls(layout: Layout, names: Sequence[str]) -> list[str]:
    """CA, server and cluster certificates in place; returns what was done (for the log)."""
    done: list[str] = []
    for directory, uid in (
        (layout.pki, None),
        (layout.broker, layout.broker_uid),
        (layout.cluster, layout.cluster_uid),
        (layout.ca, None),
    ):
        _directory(directory, uid, 0o700 if directory == layout.pki else 0o750)
    layout.ca.chmod(0o755)
    ca_cert, ca_key = _read(layout.pki / "ca.crt"), _read(layout.pki / "ca.key")
    imported = ca_key is None and (layout.broker / "server.crt").is_file()
    if imported:
        ca_cert = _read(layout.broker / "ca.crt")
        if ca_cert is None:
            raise InitError(f"{layout.broker / 'ca.crt'} missing (import-tls the CA too)")
        done.append("TLS: the operator's certificates (import-tls), kept as given")
    else:
        if ca_cert is None or ca_key is None:
            ca = broker_pki.new_ca()
            _write(layout.pki / "ca.key", ca.key_pem, None, 0o600)
            _write(layout.pki / "ca.crt", ca.cert_pem, None, 0o644)
            ca_cert, ca_key = ca.cert_pem, ca.key_pem
            done.append("TLS: a new CA")
        ca = broker_pki.KeyPair(ca_cert, ca_key)
        ca_changed = _read(layout.broker / "ca.crt") != ca_cert
        server = _read(layout.broker / "server.crt")
        if _needs_issue(server, ca_changed, names):
            pair = broker_pki.issue(ca, SERVER_COMMON_NAME, names)
            _write(layout.broker / "server.key", pair.key_pem, layout.broker_uid, 0o600)
            _write(layout.broker / "server.crt", pair.cert_pem, layout.broker_uid, 0o644)
            done.append(f"TLS: broker certificate for {', '.join(names)}")
        client = _read(layout.cluster / "cluster_net.crt")
        if _needs_issue(client, _read(layout.cluster / "ca.crt") != ca_cert):
            pair = broker_pki.issue(ca, CLUSTER_COMMON_NAME)
            _write(layout.cluster / "cluster_net.key", pair.key_pem, layout.cluster_uid, 0o600)
            _write(layout.cluster / "cluster_net.crt", pair.cert_pem, layout.cluster_uid, 0o644)
            done.append("TLS: cluster service manager certificate")
    for directory, uid in (
        (layout.broker, layout.broker_uid),
        (layout.cluster, layout.cluster_uid),
        (layout.ca, None),
    ):
        _write(directory / "ca.crt", ca_cert, uid, 0o644)
    for name in ("server.crt", "server.key"):
        if not (layout.broker / name).is_file():
            raise InitError(f"{layout.broker / name} missing")
    for name in ("cluster_net.crt", "cluster_net.key"):
        if not (layout.cluster / name).is_file():
            raise InitError(f"{layout.cluster / name} missing (import-tls it, or remove the CA)")
    return done


def set_user(layout: Layout, user: str, password: str) -> bool:
    """`user` in the password file with `password`; an entry that already matches is kept."""
    broker_auth.check_user(user)
    text = layout.passwd.read_text() if layout.passwd.is_file() else ""
    current = mosquitto_passwd.users(text).get(user)
    if current is not None and mosquitto_passwd.verify(password, current):
        return False
    text = mosquitto_passwd.with_user(text, user, password)
    _write(layout.passwd, text.encode(), layout.broker_uid, 0o600)
    return True


def ensure_users(layout: Layout, env: Mapping[str, str]) -> list[str]:
    cluster_password = env.get("CLUSTER_MQTT_PASSWORD", "")
    if not cluster_password:
        raise InitError("CLUSTER_MQTT_PASSWORD is not set (the cluster's broker password)")
    users = [(broker_auth.CLUSTER_USER, cluster_password)]
    node, node_password = env.get("NODE_MQTT_USERNAME", ""), env.get("NODE_MQTT_PASSWORD", "")
    if bool(node) != bool(node_password):
        raise InitError("set both NODE_MQTT_USERNAME (the node id) and NODE_MQTT_PASSWORD")
    if node:
        users.append((node, node_password))
    done = []
    for user, password in users:
        try:
            changed = set_user(layout, user, password)
        except ValueError as err:
            raise InitError(str(err)) from None
        done.append(f"broker user {user}: {'set' if changed else 'unchanged'}")
    if not layout.passwd.is_file():
        _write(layout.passwd, b"", layout.broker_uid, 0o600)
    return done


def import_tls(layout: Layout, source: Path) -> list[str]:
    """The operator's certificates instead of ours: our CA key goes, theirs are kept."""
    missing = [name for name in TLS_FILES if not (source / name).is_file()]
    if missing:
        raise InitError(f"{source}: {', '.join(missing)} missing")
    _directory(layout.broker, layout.broker_uid)
    _directory(layout.cluster, layout.cluster_uid)
    for name, directory, uid in (
        ("server.crt", layout.broker, layout.broker_uid),
        ("server.key", layout.broker, layout.broker_uid),
        ("ca.crt", layout.broker, layout.broker_uid),
        ("cluster_net.crt", layout.cluster, layout.cluster_uid),
        ("cluster_net.key", layout.cluster, layout.cluster_uid),
        ("ca.crt", layout.cluster, layout.cluster_uid),
    ):
        mode = 0o600 if name.endswith(".key") else 0o644
        _write(directory / name, (source / name).read_bytes(), uid, mode)
    for name in ("ca.key", "ca.crt"):  # the directory may be a volume's mount point
        (layout.pki / name).unlink(missing_ok=True)
    return [f"TLS: imported {', '.join(TLS_FILES)} from {source}"]


def _layout(args: argparse.Namespace, env: Mapping[str, str]) -> Layout:
    return Layout(
        pki=args.pki,
        broker=args.broker,
        cluster=args.cluster,
        ca=args.ca,
        broker_uid=int(env.get("MOSQUITTO_UID", "1883")),
        cluster_uid=int(env.get("CLUSTER_UID", "10001")),
    )


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    defaults = Layout()
    parser = argparse.ArgumentParser(
        prog="python -m oakestra_net.broker_init", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--pki", type=Path, default=defaults.pki)
    parser.add_argument("--broker", type=Path, default=defaults.broker)
    parser.add_argument("--cluster", type=Path, default=defaults.cluster)
    parser.add_argument("--ca", type=Path, default=defaults.ca)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init", help="make what is missing (the compose service)")
    node = commands.add_parser("add-node", help="a broker user for a node (user = node id)")
    node.add_argument("node_id")
    node.add_argument("--password", help="default: a new random one")
    gone = commands.add_parser("remove-node", help="remove a node's broker user")
    gone.add_argument("node_id")
    commands.add_parser("ca", help="print the CA certificate the nodes need")
    source = commands.add_parser("import-tls", help="use the operator's certificates")
    source.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    try:
        layout = _layout(args, env)
    except ValueError:
        print("error: MOSQUITTO_UID and CLUSTER_UID must be numbers", file=sys.stderr)
        return 2
    try:
        if args.command == "init":
            names = server_names(env.get("MQTT_TLS_NAMES", ""))
            for line in ensure_tls(layout, names) + ensure_users(layout, env):
                print(line, flush=True)
        elif args.command == "add-node":
            password = args.password or broker_auth.new_password()
            try:
                set_user(layout, args.node_id, password)
            except ValueError as err:
                raise InitError(str(err)) from None
            keys = {"MqttUsername": args.node_id, "MqttPassword": password}
            print(json.dumps(keys, indent=2))
            print("reload the broker: docker compose kill -s SIGHUP mqtt", file=sys.stderr)
        elif args.command == "remove-node":
            text = layout.passwd.read_text() if layout.passwd.is_file() else ""
            new = mosquitto_passwd.without_user(text, args.node_id)
            _write(layout.passwd, new.encode(), layout.broker_uid, 0o600)
            print("reload the broker: docker compose kill -s SIGHUP mqtt", file=sys.stderr)
        elif args.command == "ca":
            ca_cert = _read(layout.ca / "ca.crt") or _read(layout.broker / "ca.crt")
            if ca_cert is None:
                raise InitError("no CA yet: start the broker once (docker compose up mqtt)")
            sys.stdout.write(ca_cert.decode())
        else:
            for line in import_tls(layout, args.directory):
                print(line)
    except (InitError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
