"""`net-manager run | status | cleanup`: the node daemon's command line."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import sys
import threading

from oakestra_net.log import get_logger, setup_logging

log = get_logger(__name__)


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


def _overrides(args: argparse.Namespace) -> dict:
    out = {}
    if args.socket:
        out["socket_path"] = args.socket
    if getattr(args, "port", None):
        out["tcp_port"] = args.port
    if getattr(args, "state_file", None):
        out["state_file"] = args.state_file
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    from net_manager.api import create_app
    from net_manager.config import ConfigError, load_config
    from net_manager.control.daemon import DaemonError, NodeDaemon

    try:
        config = load_config(args.config_dir, overrides=_overrides(args))
    except ConfigError as err:
        print(f"net-manager: {err}", file=sys.stderr)
        return 2
    setup_logging("net-manager", level="DEBUG" if config.debug else None)
    daemon = NodeDaemon(config)
    try:
        daemon.start()
    except DaemonError as err:
        print(f"net-manager: {err.reason}", file=sys.stderr)
        return 1
    app = create_app(daemon)
    servers = [_unix_server(make_server, config.socket_path, app)]
    if config.tcp_port:
        servers.append(make_server("127.0.0.1", config.tcp_port, app, threaded=True))
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


def _unix_server(make_server, path: str, app):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    server = make_server(f"unix://{path}", 0, app, threaded=True)
    os.chmod(path, 0o660)
    return server


def cmd_status(args: argparse.Namespace) -> int:
    from net_manager.config import load_config

    socket_path = args.socket or load_config(args.config_dir).socket_path
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


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Delete our devices and rules that the state file does not reference."""
    from net_manager.config import load_config
    from net_manager.control import statefile
    from net_manager.node.kernel import Kernel
    from net_manager.node.reconciler import DesiredState, Reconciler

    setup_logging("net-manager")
    config = load_config(args.config_dir, overrides=_overrides(args))
    state = statefile.load(config.state_file)
    if args.all or not state.node_id:
        desired = DesiredState(node=None, containers=())
    else:
        from net_manager.control.daemon import NodeDaemon

        desired = NodeDaemon(config).desired()
    kernel = Kernel()
    removed = Reconciler(kernel, lambda: desired).sweep()
    if args.all:
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
    parser = argparse.ArgumentParser(prog="net-manager", description=__doc__)
    parser.add_argument("--config-dir", default=os.environ.get("NETMANAGER_CONFIG_DIR"))
    parser.add_argument("--socket", help="unix socket of the API")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the node daemon")
    run.add_argument("--port", type=int, help="also serve the API on 127.0.0.1:PORT")
    run.add_argument("--state-file")
    status = commands.add_parser("status", help="show the daemon's state")
    status.add_argument("--json", action="store_true")
    cleanup = commands.add_parser("cleanup", help="remove leftovers no state references")
    cleanup.add_argument("--all", action="store_true", help="remove everything of ours")
    cleanup.add_argument("--state-file")
    args = parser.parse_args(argv)
    handler = {"run": cmd_run, "status": cmd_status, "cleanup": cmd_cleanup}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
