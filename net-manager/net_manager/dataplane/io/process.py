"""The data-plane process: owns the TUN and the tunnel socket, runs the packet loop.

    python -m net_manager.dataplane.io.process --control-fd N --tun NAME \\
        --tun-v4 10.19.1.254/12 --tun-v6 fcef::dead:beef/7 --mtu 1450 --port 50103

It runs in an interpreter of its own so packet work never competes with the control
plane's GIL. The control plane (supervisor.py) passes one end of a
socketpair as --control-fd; this process answers Ready once its devices exist, then
serves until Stop, SIGTERM/SIGINT, or the control end closing (the daemon died).
Test modes: --no-tun (no device; packets for the TUN are counted and dropped) and
--tun-fd (an already open packet fd, e.g. a socketpair end, stands in for the TUN).

Exit status: 0 after a normal stop, 2 when the devices cannot be set up (the reason is
logged), 1 on a crash.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

from net_manager.dataplane.channel import ChannelClosed, ChannelEndpoint, Ready
from net_manager.dataplane.core.translate import Translator, build_snapshot
from net_manager.dataplane.io.loop import LoopConfig, PacketLoop
from net_manager.dataplane.io.peers import set_buffers
from net_manager.dataplane.io.seal import KEY_ENV, Sealer, parse_key
from net_manager.dataplane.io.tun import TunDevice, TunError, open_tun
from oakestra_net.log import setup_logging

log = logging.getLogger("net_manager.dataplane")
SETUP_FAILED = 2
MAX_FLOWS = 65536
DEFAULT_FLOW_QUOTA = 0.25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="net_manager.dataplane.io.process", description=__doc__)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--tun", default="goProxyTun", help="TUN device name (<= 15 chars)")
    parser.add_argument("--tun-v4", default="10.19.1.254/12")
    parser.add_argument("--tun-v6", default="fcef::dead:beef/7", help="empty: no IPv6")
    parser.add_argument("--mtu", type=int, default=1450)
    parser.add_argument("--port", type=int, default=50103, help="tunnel UDP port (0: any)")
    parser.add_argument("--bind", default="", help="tunnel address (default: all, v4 and v6)")
    parser.add_argument("--no-tun", action="store_true", help="test mode: no TUN device")
    parser.add_argument("--tun-fd", type=int, default=None, help="test mode: use this fd")
    parser.add_argument("--sendto", action="store_true", help="no connected peer sockets")
    parser.add_argument(
        "--offload",
        choices=("auto", "on", "off"),
        default="auto",
        help="TUN segmentation/checksum offload (auto: on if the kernel supports it)",
    )
    parser.add_argument(
        "--busy-poll-us", type=float, default=0.0, help="poll this long before sleeping"
    )
    parser.add_argument("--max-flows", type=int, default=MAX_FLOWS, help="flow table size")
    parser.add_argument(
        "--flow-quota",
        type=float,
        default=DEFAULT_FLOW_QUOTA,
        help="share of the flow table one local instance may hold (0 < share <= 1)",
    )
    parser.add_argument(
        "--no-admission", action="store_true", help="benchmarks only: admit every tunnel packet"
    )
    parser.add_argument(
        "--seal",
        action="store_true",
        help=f"seal the tunnel with the key in ${KEY_ENV} (64 hex digits)",
    )
    parser.add_argument(
        "--vxlan",
        action="store_true",
        help="announce the kernel tunnel (kernel mode) in RTT probes and echoes",
    )
    parser.add_argument("--log-level", default=None)
    args = parser.parse_args(argv)
    if not 0 <= args.port < 65536:
        parser.error(f"--port {args.port} is not a UDP port")
    if args.max_flows < 1:
        parser.error(f"--max-flows {args.max_flows} must be at least 1")
    if not 0 < args.flow_quota <= 1:
        parser.error(f"--flow-quota {args.flow_quota} must be a share above 0 and at most 1")
    return args


def bind_tunnel(address: str, port: int, buffer_size: int) -> socket.socket:
    """The tunnel's UDP socket; by default one dual-stack socket on every address."""
    if address:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
    elif socket.has_ipv6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address = "::"
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        address = "0.0.0.0"
    try:
        set_buffers(sock, buffer_size)
        sock.bind((address, port))
    except OSError as err:
        sock.close()
        what = f"cannot bind the tunnel socket to {address} port {port}: {err.strerror}"
        raise OSError(err.errno, what) from None
    return sock


def create_tun(args: argparse.Namespace) -> TunDevice:
    """The TUN, with offload if asked (or, with auto, if this kernel allows it)."""
    if args.offload != "off":
        try:
            return open_tun(args.tun, args.tun_v4, args.tun_v6, args.mtu, offload=True)
        except TunError as err:
            if args.offload == "on":
                raise
            log.warning("TUN offload unavailable, continuing without: %s", err)
    return open_tun(args.tun, args.tun_v4, args.tun_v6, args.mtu)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("net-manager-dataplane", level=args.log_level)
    control = ChannelEndpoint(socket.socket(fileno=args.control_fd))
    config = LoopConfig(
        connect_peers=not args.sendto,
        busy_poll=args.busy_poll_us / 1e6,
        admission=not args.no_admission,
        vxlan=args.vxlan,
    )
    tun: TunDevice | None = None
    sealer: Sealer | None = None
    try:
        if args.seal:
            sealer = Sealer(parse_key(os.environ.get(KEY_ENV, "")))
        if not args.no_tun and args.tun_fd is None:
            tun = create_tun(args)
        tunnel = bind_tunnel(args.bind, args.port, config.socket_buffer)
    except (TunError, OSError, ValueError) as err:
        log.error("data plane cannot start: %s", err)
        if tun is not None:
            tun.close()
        return SETUP_FAILED
    tun_fd = tun.fileno() if tun is not None else args.tun_fd
    if tun_fd is not None:
        os.set_blocking(tun_fd, False)
    translator = Translator(
        build_snapshot([], [], "0.0.0.0"),
        max_flows=args.max_flows,
        flow_quota=max(1, int(args.max_flows * args.flow_quota)),
    )
    offload = tun is not None and tun.offload
    loop = PacketLoop(
        translator, tunnel, control, tun_fd, config=config, offload=offload, sealer=sealer
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: loop.stop())
    try:
        port = tunnel.getsockname()[1]
        control.send(Ready(port=port, pid=os.getpid()))
        fields = {
            "tun": args.tun if tun else None,
            "port": port,
            "offload": offload,
            "sealed": sealer is not None,
        }
        log.info("data plane ready", extra={"fields": fields})
        loop.run()
    except ChannelClosed as err:
        log.info("data plane stopping: %s", err)
    finally:
        tunnel.close()
        if tun is not None:
            tun.close()
        control.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
