"""The packet loop of the data-plane process: TUN <-> translator <-> UDP tunnel.

One thread, one epoll over three fds: the TUN, the tunnel's UDP socket and the control
channel. Each wake-up drains the ready fds until EAGAIN, at most `batch` packets per fd
(level-triggered epoll brings a busy fd back at once, so neither side starves), into
one preallocated buffer (readinto / recvfrom_into), and does the verdict's I/O:

- from the TUN (Translator.outgoing): LOCAL -> write back to the TUN; REMOTE -> send to
  the peer's (node_ip, node_port) through a connected UDP socket per peer (`peers`;
  or sendto on the bound socket, see LoopConfig.connect_peers); MISS -> the miss queue
  (`pending`) keeps a copy and the control side gets one Resolve per service IP; its
  Resolved replays the packets, a timeout or "not found" drops them (counted);
- from the tunnel: first nibble 4/6 -> Translator.from_tunnel (admission, then the
  reverse translation) -> DELIVER: write to the TUN; MISS (the inner source may be the
  instance IP of a caller not resolved yet) -> the admission queue, resolved like a
  table miss; GSO_MAGIC -> a GSO frame (`offload`); anything else is a control
  datagram (`probes`).

New addresses to resolve are rate-limited per owner (per container on the TUN side,
per sending node on the tunnel side), so neither a container nor a host on the underlay
can turn packets into a storm of table queries.

With a tunnel key (`seal`), every datagram is sealed on its way out and only sealed
datagrams are taken in (`_on_tunnel_sealed`; the plain path stays as it is).

The control channel's messages are handled by `control` (ControlDispatch), TUN offload
and GSO frames by `offload` (OffloadPath); both are mixed into PacketLoop, which keeps
the loop itself and its timers: every `report_interval` it sends the jobs the traffic
used (Used) and its counters (Counters), expires idle flows, and probes its peers.
Translation itself is the core's job (core.translate); process.py builds the devices
and runs the loop.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from net_manager.dataplane.channel import (
    ChannelEndpoint,
    Counters,
    Used,
)
from net_manager.dataplane.core.translate import LOCAL, Action, Translator
from net_manager.dataplane.io import probes
from net_manager.dataplane.io.control import ControlDispatch
from net_manager.dataplane.io.offload import GSO_FRAME_HEADER, GSO_MAGIC, OffloadPath
from net_manager.dataplane.io.peers import SOCKET_BUFFER, Peers, bound_address, source_ip
from net_manager.dataplane.io.pending import PendingPackets, RateLimiter
from net_manager.dataplane.io.seal import OVERHEAD, Sealer
from net_manager.dataplane.io.tun import (
    VNET_HDR_LEN,
)

log = logging.getLogger(__name__)

BUFFER_SIZE = 65536 + 64  # the largest IP packet (or GSO frame), and room to spare


@dataclass(frozen=True)
class LoopConfig:
    batch: int = 64  # packets per fd per wake-up
    tick: float = 0.1  # how often timers are looked at when idle (s)
    report_interval: float = 1.0  # Used + Counters + flow expiry (s)
    resolve_timeout: float = 5.0  # queued packets of an unanswered miss are dropped after
    negative_ttl: float = 2.0  # a "not found" answer is trusted this long (s)
    queue_per_ip: int = 64  # a 64 KiB datagram is 46 fragments at MTU 1450
    queue_total: int = 1024
    queue_bytes: int = 4 * 1024 * 1024  # per queue (misses, admission)
    miss_rate: float = 5.0  # new service IPs one container may have resolved, per s
    miss_burst: float = 10.0
    admission_rate: float = 20.0  # new caller instance IPs one node may make us resolve
    admission_burst: float = 50.0
    admission_overall_rate: float = 100.0  # the same for all senders together (spoofed
    admission_overall_burst: float = 200.0  # underlay addresses are cheap)
    admission: bool = True  # False: tunnel packets skip admission (bench comparison only)
    probe_interval: float = 3.0
    connect_peers: bool = True  # a connected socket per peer, else sendto on the bound one
    socket_buffer: int = SOCKET_BUFFER
    busy_poll: float = 0.0  # s of polling without sleeping after traffic (0: off)
    vxlan: bool = False  # announce the kernel tunnel (CAP_VXLAN) in probes and echoes


class PacketLoop(OffloadPath, ControlDispatch):
    """Moves packets between the TUN, the translator and the tunnel; see the module doc.

    tun_fd None runs without a TUN (tests): what would be written to it is counted as
    drop_no_tun. The loop owns none of the fds; process.py closes them.
    """

    def __init__(
        self,
        translator: Translator,
        tunnel: socket.socket,
        control: ChannelEndpoint,
        tun_fd: int | None,
        *,
        config: LoopConfig = LoopConfig(),
        clock: Callable[[], float] = time.monotonic,
        offload: bool = False,
        sealer: Sealer | None = None,
    ) -> None:
        self.translator = translator
        self.sealer = sealer
        self._sealed = bytearray(BUFFER_SIZE + OVERHEAD) if sealer is not None else bytearray()
        self.config = config
        self._clock = clock
        self._tunnel = tunnel
        self._control = control
        self._tun_fd = tun_fd
        self.counts = dict.fromkeys(LOOP_COUNTERS, 0)
        self._buf = bytearray(BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._tun_read: Callable[[bytearray], int | None] = _no_read
        self._tun_write: Callable[[memoryview], int] = self._no_tun_write
        self.offload = offload and tun_fd is not None
        # Offload: [GSO_MAGIC][virtio_net_hdr] is read ahead of each packet (readv), and is
        # the prefix of the GSO frame sent to peers that take them.
        self._frame = bytearray([GSO_MAGIC]) + bytearray(VNET_HDR_LEN)
        self._vnet = memoryview(self._frame)[1:]
        # A GSO frame received into _buf: its vnet header and its packet.
        self._frame_vnet = self._view[1:GSO_FRAME_HEADER]
        self._frame_packet = self._view[GSO_FRAME_HEADER:]
        if tun_fd is not None:
            tun_file = open(tun_fd, "r+b", buffering=0, closefd=False)  # noqa: SIM115
            self._tun_file = tun_file
            self._tun_read = tun_file.readinto
            plain_write = self._vnet_writer(tun_fd) if self.offload else tun_file.write
            self._tun_write = self._tun_writer(plain_write)
        tunnel.setblocking(False)
        self.peers = Peers(
            tunnel,
            connect=config.connect_peers,
            buffer_size=config.socket_buffer,
            seal=sealer.seal if sealer is not None else None,
        )
        self.pending: PendingPackets[bytes] = PendingPackets(
            per_ip=config.queue_per_ip,
            total=config.queue_total,
            total_bytes=config.queue_bytes,
            timeout=config.resolve_timeout,
            negative_ttl=config.negative_ttl,
            limiter=RateLimiter(rate=config.miss_rate, burst=config.miss_burst),
        )
        # Tunnelled packets waiting for their source to be resolved: (sender, packet).
        self.admission: PendingPackets[tuple[str, bytes]] = PendingPackets(
            per_ip=config.queue_per_ip,
            total=config.queue_total,
            total_bytes=config.queue_bytes,
            timeout=config.resolve_timeout,
            negative_ttl=config.negative_ttl,
            limiter=RateLimiter(rate=config.admission_rate, burst=config.admission_burst),
            overall=RateLimiter(
                rate=config.admission_overall_rate, burst=config.admission_overall_burst
            ),
            size_of=lambda item: len(item[1]),
        )
        self.prober = probes.Prober(
            translator.rtt,
            interval=config.probe_interval,
            capabilities=(probes.CAP_GSO if self.offload else 0)
            | (probes.CAP_VXLAN if config.vxlan else 0),
            clock=clock,
        )
        self._gso_peers: set[tuple[str, int]] = set()  # peers that take GSO frames
        self._running = False
        self._next_report = 0.0
        self._epoll: select.epoll | None = None

    def run(self) -> None:
        """Serve until a Stop message, the control channel closing, or stop()."""
        self._epoll = epoll = select.epoll()
        handlers: dict[int, Callable[[], object]] = {
            self._tunnel.fileno(): self._on_tunnel
            if self.sealer is None
            else self._on_tunnel_sealed,
            self._control.fileno(): self._on_control,
        }
        if self._tun_fd is not None:
            handlers[self._tun_fd] = self._on_tun_offload if self.offload else self._on_tun
        for fd in handlers:
            epoll.register(fd, select.EPOLLIN)
        self._running = True
        poll, clock, tick = epoll.poll, self._clock, self.config.tick
        busy_poll, busy_until = self.config.busy_poll, 0.0
        next_tick = 0.0
        try:
            while self._running:
                # After traffic, keep polling without sleeping for busy_poll seconds: the
                # next packet of an exchange often comes sooner than a wake-up would.
                events = poll(0 if busy_until else tick)
                for fd, _events in events:
                    try:
                        handlers[fd]()
                    except Exception:  # a bug must not take the node's traffic down
                        self.counts["loop_errors"] += 1
                        log.exception("data plane loop error (fd %d)", fd)
                now = clock()
                if events:
                    busy_until = now + busy_poll if busy_poll else 0.0
                elif busy_until and now >= busy_until:
                    busy_until = 0.0
                if now >= next_tick:
                    next_tick = now + tick
                    self._timers(now)
        finally:
            epoll.close()
            self._epoll = None
            self.peers.close()

    def stop(self) -> None:
        self._running = False

    def _on_tun(self) -> None:
        """Drain up to batch packets from the TUN, translate and forward them."""
        read, buf, view = self._tun_read, self._buf, self._view
        outgoing, senders = self.translator.outgoing, self.peers.senders
        write_tun = self._tun_write
        remote, miss = Action.REMOTE, Action.MISS
        done = sent = send_drops = written = 0
        for _ in range(self.config.batch):
            n = read(buf)
            if not n:
                break
            done += 1
            verdict = outgoing(buf, n)
            if verdict.action is remote:
                send = senders.get(verdict.address) or self.peers.sender(verdict.address)
                try:
                    send(view[:n])
                    sent += 1
                except OSError as err:
                    send_drops += 1
                    self._send_error(err, verdict.address)
            elif verdict is LOCAL:
                written += write_tun(view[:n])
            elif verdict.action is miss:
                self._queue_miss(verdict, bytes(view[:n]))
        counts = self.counts
        counts["tun_packets_read"] += done
        counts["tunnel_packets_sent"] += sent
        counts["drop_tunnel_send"] += send_drops
        counts["tun_packets_written"] += written

    def _on_tunnel(self) -> None:
        """Drain up to batch datagrams from the tunnel; deliver packets for local IPs."""
        recv, buf, view = self._tunnel.recvfrom_into, self._buf, self._view
        from_tunnel, write_tun = self.translator.from_tunnel, self._tun_write
        deliver, miss = Action.DELIVER, Action.MISS
        if not self.config.admission:
            incoming = self.translator.incoming
            from_tunnel = lambda buf, n, sender: incoming(buf, n)  # noqa: E731
        done = written = 0
        for _ in range(self.config.batch):
            try:
                n, address = recv(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:  # e.g. ECONNREFUSED queued by an ICMP error
                log.debug("tunnel receive error: %s", err)
                continue
            done += 1
            version = buf[0] >> 4 if n else 0
            if version == 4 or version == 6:
                verdict = from_tunnel(buf, n, address[0])
                if verdict.action is deliver:
                    written += write_tun(view[:n])
                elif verdict.action is miss:
                    self._queue_admission(verdict, bytes(view[:n]))
            elif buf[0] == GSO_MAGIC:
                written += self._on_gso_frame(n, address[0])
            else:
                self._on_control_datagram(view[:n], address)
        self.counts["tunnel_packets_received"] += done
        self.counts["tun_packets_written"] += written

    def _on_tunnel_sealed(self) -> None:
        """_on_tunnel for a sealed tunnel: open each datagram, drop what is not sealed."""
        recv, sealed, buf, view = self._tunnel.recvfrom_into, self._sealed, self._buf, self._view
        open_sealed = self.sealer.open  # type: ignore[union-attr]
        from_tunnel, write_tun = self.translator.from_tunnel, self._tun_write
        deliver, miss, counts = Action.DELIVER, Action.MISS, self.counts
        done = written = 0
        for _ in range(self.config.batch):
            try:
                size, address = recv(sealed)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                log.debug("tunnel receive error: %s", err)
                continue
            done += 1
            data = open_sealed(memoryview(sealed)[:size])
            if data is None:
                counts["drop_not_sealed"] += 1
                continue
            n = len(data)
            buf[:n] = data
            version = buf[0] >> 4 if n else 0
            if version == 4 or version == 6:
                verdict = from_tunnel(buf, n, address[0])
                if verdict.action is deliver:
                    written += write_tun(view[:n])
                elif verdict.action is miss:
                    self._queue_admission(verdict, data)
            elif n and buf[0] == GSO_MAGIC:
                written += self._on_gso_frame(n, address[0])
            else:
                self._on_control_datagram(view[:n], address)
        counts["tunnel_packets_received"] += done
        counts["tun_packets_written"] += written

    def _tun_writer(self, write: Callable[[memoryview], int | None]) -> Callable[[memoryview], int]:
        """write to the TUN returning 1 if the packet went in, else 0 (counted as a drop)."""
        counts = self.counts

        def write_tun(data: memoryview) -> int:
            try:
                if write(data):
                    return 1
            except OSError as err:
                log.debug("TUN write refused a %d-byte packet: %s", len(data), err)
            counts["drop_tun_write"] += 1
            return 0

        return write_tun

    def _no_tun_write(self, data: memoryview) -> int:
        self.counts["drop_no_tun"] += 1
        return 0

    def _send_error(self, err: OSError, address: tuple[str, int] | None) -> None:
        if err.errno not in (errno.EAGAIN, errno.ENOBUFS):
            self.counts["tunnel_send_errors"] += 1
            log.debug("cannot send to peer %s: %s", address, err)

    def _forward(self, verdict, n: int) -> None:
        """Do a verdict's I/O for the packet in buf[:n] (the slow path of replays)."""
        view = self._view[:n]
        if verdict.action is Action.REMOTE:
            try:
                self.peers.sender(verdict.address)(view)
                self.counts["tunnel_packets_sent"] += 1
            except OSError as err:
                self.counts["drop_tunnel_send"] += 1
                self._send_error(err, verdict.address)
        elif verdict is LOCAL or verdict.action is Action.DELIVER:
            self.counts["tun_packets_written"] += self._tun_write(view)

    def _on_control_datagram(self, data: memoryview, address: tuple) -> None:
        self.counts["control_datagrams"] += 1
        if not data or data[0] != probes.MAGIC:
            self.counts["drop_bad_control"] += 1
            return
        echoes = self.prober.echoes
        sender = source_ip(address)
        echo = self.prober.handle(data, sender, (sender, address[1]))
        if self.prober.echoes != echoes:
            self._update_gso_peers()
        if echo is not None:
            if self.sealer is not None:
                echo = self.sealer.seal(echo)
            try:
                self._tunnel.sendto(echo, address)
            except OSError as err:
                self._send_error(err, None)

    def _send_probes(self, now: float) -> None:
        for datagram, address in self.prober.probes_due(now):
            if self.sealer is not None:
                datagram = self.sealer.seal(datagram)
            try:
                self._tunnel.sendto(datagram, bound_address(self._tunnel, address))
            except OSError as err:
                self._send_error(err, address)

    def _timers(self, now: float) -> None:
        """Expire misses (every tick); then once per report_interval the periodic work."""
        self.counts["drop_resolve_timeout"] += self.pending.expire(now)
        self.counts["drop_admission_timeout"] += self.admission.expire(now)
        if now < self._next_report:
            return
        self._next_report = now + self.config.report_interval
        self.translator.expire(now)
        self._send_probes(now)
        self._update_gso_peers()  # peers that stopped answering are forgotten
        jobs = self.translator.used_jobs
        if jobs:
            self._send(Used(tuple(sorted(jobs))))
            jobs.clear()
        self._send(
            Counters(
                self.counters(), dict(self.translator.rtt), dict(self.prober.peer_capabilities)
            )
        )

    def counters(self) -> dict[str, int]:
        values = {**self.translator.counters, **self.counts}
        values["queued_packets"] = len(self.pending) + len(self.admission)
        values["queued_service_ips"] = len(self.pending.service_ips) + len(
            self.admission.service_ips
        )
        values["peers"] = len(self.peers)
        values["probes_sent"] = self.prober.sent
        values["probe_echoes"] = self.prober.echoes
        values["drop_bad_probe"] = self.prober.bad
        return values


def _no_read(buf: bytearray) -> int | None:
    return None


LOOP_COUNTERS = (
    "tun_packets_read",
    "tun_packets_written",
    "tunnel_packets_sent",
    "tunnel_packets_received",
    "tunnel_send_errors",
    "drop_tunnel_send",
    "drop_no_tun",
    "drop_tun_write",
    "drop_queue_full",
    "drop_unresolved",
    "drop_resolve_timeout",
    "drop_miss_rate_limited",
    "drop_admission_queue_full",
    "drop_admission_unresolved",
    "drop_admission_timeout",
    "drop_admission_rate_limited",
    "admission_resolves",
    "drop_bad_control",
    "resolve_requests",
    "control_datagrams",
    "drop_not_sealed",
    "control_errors",
    "control_dropped",
    "snapshots",
    "snapshot_errors",
    "loop_errors",
    "gso_frames_sent",
    "gso_frames_received",
    "segmented_packets",
    "drop_bad_offload",
    "drop_gso_unsupported",
)
