"""`net-manager run | status | cleanup`: the node daemon's command line.

Every setting (`config.SETTINGS`: variable, flag, default, meaning) may be given before
or after the subcommand; a flag wins over its environment variable, which wins over
netcfg.json / tuncfg.json. `--help`, `--version` and a bad argument (exit 2, naming it)
end the program before anything is opened. `run` then checks, before it serves or
touches the kernel: every value (exit 2, one line naming the variable, flag or file
key), the TLS files (exit 2), the broker's answer to our credentials when the cluster
is known (refused: exit 1; merely unreachable: a warning, the session keeps retrying),
and that the API socket can be bound (exit 1). It logs the effective configuration once,
secrets masked.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import sys
import threading
from typing import Any

from net_manager.config import ENV_VARS, SETTINGS, ConfigError, NetConfig, load_config
from oakestra_net import settings as s
from oakestra_net.console import exit_bad_configuration, exit_unavailable
from oakestra_net.log import get_logger, setup_logging

log = get_logger(__name__)

COMPONENT = "net-manager"
_UNREACHABLE = "CLUSTER_URL / CLUSTER_MQTT_PORT"
_CREDENTIALS = "MQTT_USERNAME / MQTT_PASSWORD (netcfg.json MqttUsername / MqttPassword)"
_TLS = "MQTT_CA_FILE / MQTT_CERT_FILE / MQTT_KEY_FILE (netcfg.json MqttCa / MqttCert / MqttKey)"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def call(socket_path: str, method: str, path: str, body: dict | None = None):
    """One HTTP call to the daemon's unix socket: (status, decoded JSON or text)."""
    connection = UnixHTTPConnection(socket_path)
    try:
        payload = json.dumps(body) if body is not None else None
        connection.request(method, path, payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read().decode()
    finally:
        connection.close()
    try:
        return response.status, json.loads(data) if data else None
    except ValueError:
        return response.status, data


def build_parser() -> argparse.ArgumentParser:
    """The settings (before or after the subcommand) and the three subcommands."""
    parser = SETTINGS.parser()
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _subcommand(commands, "run", "run the node daemon (serves the node engine's API)")
    status = _subcommand(commands, "status", "show the running daemon's state")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    cleanup = _subcommand(commands, "cleanup", "remove our devices and rules no state references")
    cleanup.add_argument("--all", action="store_true", help="remove everything of ours")
    return parser


def _subcommand(commands: Any, name: str, meaning: str) -> argparse.ArgumentParser:
    sub = commands.add_parser(
        name,
        help=meaning,
        description=meaning,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    SETTINGS.add_arguments(sub)
    # A setting not given after the subcommand must not overwrite one given before it:
    # argparse copies every attribute of the subcommand's namespace, defaults included.
    fields = {row.field for row in SETTINGS.rows}
    for action in sub._actions:
        if action.dest in fields:
            action.default = argparse.SUPPRESS
    return sub


def load(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any], NetConfig]:
    """Parse the command line, export the flags, resolve every setting; exit on a bad one."""
    parser = build_parser()
    # unknown arguments first, so the error names them (argparse would complain about the
    # missing command instead)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.error("a command is required: run, status or cleanup")
    flags = SETTINGS.flags(args)
    SETTINGS.export(flags, os.environ)  # the files-then-environment loader sees the flags
    try:
        values = SETTINGS.values(os.environ, flags)
    except ValueError as err:
        exit_bad_configuration(COMPONENT, str(err))
    setup_logging(COMPONENT, level=values["log_level"], fmt=values["log_format"])
    try:
        config = load_config(values["config_dir"], os.environ)
    except ConfigError as err:
        exit_bad_configuration(COMPONENT, str(err))
    if config.debug and SETTINGS.texts(os.environ, flags)["log_level"][0] == "default":
        setup_logging(COMPONENT, level="DEBUG", fmt=values["log_format"])  # netcfg.json Debug
    return args, values, config


def effective(config: NetConfig, values: dict[str, Any]) -> dict[str, Any]:
    """The configuration in use, by variable name (files and defaults applied), masked."""
    shown = {}
    for row in SETTINGS.rows:
        value = getattr(config, ENV_VARS[row.env]) if row.env in ENV_VARS else values[row.field]
        shown[row.env] = s.display(row, value) if value != "" else None  # "" = unset
    shown["Debug"] = config.debug
    shown["TunnelDevice"] = config.tun.device_name
    return shown


def cmd_run(values: dict[str, Any], config: NetConfig) -> int:
    from werkzeug.serving import make_server

    from net_manager.api import create_app
    from net_manager.control.daemon import DaemonError, NodeDaemon

    log.info("effective configuration", **effective(config, values))
    problem = tls_problem(config)
    if problem:
        exit_bad_configuration(COMPONENT, problem)
    check_broker(config, values["startup_timeout"])
    daemon = NodeDaemon(config)
    app = create_app(daemon)
    servers: list[Any] = []
    try:
        servers.append(_unix_server(make_server, config.socket_path, app))
        if config.tcp_port:
            servers.append(_tcp_server(make_server, config.tcp_port, app))
    except OSError as err:
        _close(servers, config.socket_path)
        where = (
            f"NETMANAGER_PORT {config.tcp_port}"
            if servers
            else f"NETMANAGER_SOCKET {config.socket_path}"
        )
        exit_unavailable(COMPONENT, f"{where}: cannot serve the API: {err.strerror or err}")
    try:
        daemon.start()
    except DaemonError as err:
        _close(servers, config.socket_path)
        exit_unavailable(COMPONENT, err.reason)
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    log.info(
        "net manager ready",
        socket=config.socket_path,
        port=config.tcp_port or None,
        node_ip=daemon.node_ip,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping")
    for server in servers:
        server.shutdown()
    daemon.stop()
    return 0


def tls_problem(config: NetConfig) -> str | None:
    """A configured TLS file that is missing or unreadable, named by its settings."""
    files = (
        ("MQTT_CA_FILE / netcfg.json MqttCa", config.mqtt_ca),
        ("MQTT_CERT_FILE / netcfg.json MqttCert", config.mqtt_cert),
        ("MQTT_KEY_FILE / netcfg.json MqttKey", config.mqtt_key),
    )
    for names, path in files:
        if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            return f"{names}: {path} is not a readable file"
    if config.mqtt_key and not config.mqtt_cert:
        return "MQTT_KEY_FILE / netcfg.json MqttKey is set without MQTT_CERT_FILE / MqttCert"
    if config.mqtt_password and not config.mqtt_username:
        return "MQTT_PASSWORD / netcfg.json MqttPassword is set without MQTT_USERNAME"
    return None


def check_broker(config: NetConfig, timeout: float) -> None:
    """When the cluster is known (registered before, or configured): does its broker take
    our credentials? Refused -> exit 1; unreachable -> a warning (it may come later)."""
    from net_manager.control import statefile
    from oakestra_net.mqtt import MqttConfig
    from oakestra_net.startcheck import mqtt_problem

    state = statefile.load(config.state_file)
    cluster = state.cluster_url if state.node_id else config.cluster_url
    if cluster in ("", "0.0.0.0"):
        return
    try:
        mqtt = MqttConfig(
            host=cluster,
            port=config.cluster_mqtt_port,
            client_id="net-manager-startcheck",
            username=config.mqtt_username or None,
            password=config.mqtt_password or None,
            ca_file=config.mqtt_ca or None,
            cert_file=config.mqtt_cert or None,
            key_file=config.mqtt_key or None,
        )
    except ValueError as err:
        exit_bad_configuration(COMPONENT, str(err))
    problem = mqtt_problem(
        mqtt, timeout, address_names=_UNREACHABLE, credential_names=_CREDENTIALS, tls_names=_TLS
    )
    if problem is None:
        return
    if problem.startswith(_UNREACHABLE):
        log.warning("cluster broker not reachable yet; the daemon keeps trying", reason=problem)
        return
    exit_unavailable(COMPONENT, problem)


def _unix_server(make_server, path: str, app):
    """Serve `app` on the unix socket `path`, which appears only once it accepts connections.

    The node engine (and anyone else) may connect as soon as the file exists, so the
    socket is bound and listening under a temporary name first and then renamed. We bind
    it ourselves: werkzeug prints and exits on a bind error, and must not replace a
    socket another daemon still serves.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path) and _answers(path):
        raise OSError(f"another net manager already serves {path}")
    staging = f"{path}.{os.getpid()}.tmp"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(staging)
        os.chmod(staging, 0o660)
        listener.listen(128)
        server = make_server(f"unix://{path}", 0, app, threaded=True, fd=listener.fileno())
    os.replace(staging, path)  # also replaces a socket left by a daemon that died
    return server


def _tcp_server(make_server, port: int, app):
    with socket.create_server(("127.0.0.1", port), backlog=128) as listener:
        return make_server("127.0.0.1", port, app, threaded=True, fd=listener.fileno())


def _close(servers: list[Any], socket_path: str) -> None:
    """Close what was bound; the socket file goes only if we created it (a server exists)."""
    for server in servers:
        server.server_close()
    if servers and os.path.exists(socket_path):
        os.unlink(socket_path)


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def cmd_status(args: argparse.Namespace, config: NetConfig) -> int:
    socket_path = config.socket_path
    try:
        status, body = call(socket_path, "GET", "/status")
    except OSError as err:
        print(f"net-manager: cannot reach the daemon at {socket_path}: {err}", file=sys.stderr)
        print("is it running? (net-manager run, or systemctl status netmanager)", file=sys.stderr)
        return 1
    if args.json or not isinstance(body, dict):
        print(json.dumps(body, indent=2))
        return 0 if status == 200 else 1
    print(format_status(body))
    return 0


def format_status(status: dict) -> str:
    lines = [
        f"node        {status['node_id'] or '(not registered)'}   ip {status['node_ip']}:"
        f"{status['node_port']}   broker {'connected' if status['broker_connected'] else 'DOWN'}",
        f"subnets     {status['subnet'] or '-'}/26   {status['subnet_v6'] or '-'}/120",
        f"data plane  {status.get('dataplane_mode') or '-'}",
        f"instances   {len(status['instances'])}",
    ]
    lines += [
        f"  {i['instance']:<40} {i['namespace_ip']:<15} {i['namespace_ip_v6']}"
        for i in status["instances"]
    ]
    lines.append(f"table       {len(status['table'])} entries")
    lines += [
        f"  {e.get('job_name', '?'):<40} #{e.get('instance_number')} -> "
        f"{e.get('namespace_ip')} @ {e.get('node_ip')}:{e.get('node_port')}"
        for e in status["table"]
    ]
    lines.append(f"interests   {', '.join(sorted(status['interests'])) or '-'}")
    if status.get("pending_queries"):
        lines.append(f"pending     {', '.join(status['pending_queries'])}")
    lines.append(f"counters    {json.dumps(status['counters'], sort_keys=True)}")
    return "\n".join(lines)


def cmd_cleanup(args: argparse.Namespace, config: NetConfig) -> int:
    """Delete our devices and rules that the state file does not reference."""
    from net_manager.control import statefile
    from net_manager.node.kernel import TUN, Kernel
    from net_manager.node.reconciler import DesiredState, Reconciler
    from net_manager.node.tunnel import DEVICE as TUNNEL_DEVICE

    state = statefile.load(config.state_file)
    if args.all or not state.node_id:
        desired = DesiredState(node=None, containers=())
    else:
        from net_manager.control.daemon import NodeDaemon

        desired = NodeDaemon(config).desired()
    kernel = Kernel()
    # The TUN and the kernel tunnel belong to a running data plane (it removes them).
    removed = Reconciler(kernel, lambda: desired, keep=(TUN, TUNNEL_DEVICE)).sweep()
    if args.all:
        if kernel.link_exists(TUNNEL_DEVICE):
            removed.append(TUNNEL_DEVICE)
        kernel.delete_tunnel(TUNNEL_DEVICE)
        kernel.delete_base_rules()
        removed += _delete_kernel_path_table()
    print(f"removed: {', '.join(removed) if removed else 'nothing'}")
    return 0


def _delete_kernel_path_table() -> list[str]:
    """The kernel data plane's nftables table, if nft is installed and it exists."""
    from net_manager.dataplane.kernel.nft import Nft, NftError
    from net_manager.dataplane.kernel.ruleset import FAMILY, TABLE

    nft = Nft()
    try:
        if not nft.supported()[0] or not nft.table():
            return []
        nft.delete_table()
    except NftError as err:
        print(f"cannot remove the nftables table {TABLE}: {err}", file=sys.stderr)
        return []
    return [f"nftables {FAMILY} {TABLE}"]


def main(argv: list[str] | None = None) -> int:
    args, values, config = load(argv)
    if args.command == "run":
        return cmd_run(values, config)
    if args.command == "status":
        return cmd_status(args, config)
    return cmd_cleanup(args, config)


if __name__ == "__main__":
    sys.exit(main())
