"""The packet loop of the data-plane process: TUN <-> translator <-> UDP tunnel.

One thread, one epoll over three fds: the TUN, the tunnel's UDP socket and the control
channel. Each wake-up drains the ready fds until EAGAIN, at most `batch` packets per fd
(level-triggered epoll brings a busy fd back at once, so neither side starves), into
one preallocated buffer (readinto / recvfrom_into), and does the verdict's I/O:

- from the TUN (Translator.outgoing): LOCAL -> write back to the TUN; REMOTE -> send to
  the peer's (node_ip, node_port) through a connected UDP socket per peer (or sendto on
  the bound socket, see LoopConfig.connect_peers); MISS -> PendingPackets keeps a copy
  and the control side gets one Resolve per service IP; its Resolved (or a snapshot
  with the IP) replays the packets, a timeout or "not found" drops them (counted);
- from the tunnel: first nibble 4/6 -> Translator.incoming -> DELIVER: write to the TUN;
  GSO_MAGIC -> a GSO frame (below); anything else is a control datagram (probes.py).

With TUN offload (process.py --offload) the TUN hands out TCP segments of up to 64 KiB
with partial checksums behind a virtio_net_hdr. Peers that announce probes.CAP_GSO get
them whole as GSO frames, [GSO_MAGIC][virtio_net_hdr][packet], in the tunnel's control
range (DESIGN.md §4), and write them to their TUN with the header (their kernel
segments); other peers (upstream nodes) get ordinary packets, segmented and
checksummed here (tun.segment_tcp / tun.finish_checksum).

Every `report_interval` the loop sends the jobs the traffic used (Used) and its
counters (Counters), expires idle flows, and probes its peers. Translation itself is
translate.py's job; process.py builds the devices and runs the loop.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address

from net_manager.dataplane import probes
from net_manager.dataplane.channel import (
    ChannelClosed,
    ChannelEndpoint,
    ChannelError,
    Counters,
    Message,
    Resolve,
    Resolved,
    Snapshot,
    Stop,
    Used,
)
from net_manager.dataplane.translate import LOCAL, Action, Translator, build_snapshot
from net_manager.dataplane.tun import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    VNET_HDR,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
    finish_checksum,
    segment_tcp,
)

log = logging.getLogger(__name__)

BUFFER_SIZE = 65536 + 64  # the largest IP packet (or GSO frame), and room to spare
SOCKET_BUFFER = 8 * 1024 * 1024
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # Linux; not exported by the socket module
GSO_MAGIC = 0xA7  # first byte of a GSO frame (first nibble neither 4 nor 6)
GSO_FRAME_HEADER = 1 + VNET_HDR_LEN


@dataclass(frozen=True)
class LoopConfig:
    batch: int = 64  # packets per fd per wake-up
    tick: float = 0.1  # how often timers are looked at when idle (s)
    report_interval: float = 1.0  # Used + Counters + flow expiry (s)
    resolve_timeout: float = 5.0  # queued packets of an unanswered miss are dropped after
    negative_ttl: float = 2.0  # a "not found" answer is trusted this long (s)
    queue_per_ip: int = 32
    queue_total: int = 1024
    probe_interval: float = 3.0
    connect_peers: bool = True  # a connected socket per peer, else sendto on the bound one
    socket_buffer: int = SOCKET_BUFFER
    busy_poll: float = 0.0  # s of polling without sleeping after traffic (0: off)


# ---------------------------------------------------------------- the miss queue


class PendingPackets:
    """Packets waiting for their service IP to be resolved; bounded per IP and in total.

    add() says what to do with a packet to an unknown service IP: "resolve" (queued, and
    the first for this IP: ask the control side), "queued", or a drop reason
    ("queue_full", "unresolved" while a negative answer is fresh). No I/O.
    """

    def __init__(self, *, per_ip: int, total: int, timeout: float, negative_ttl: float) -> None:
        self.per_ip = per_ip
        self.total = total
        self.timeout = timeout
        self.negative_ttl = negative_ttl
        self._queues: dict[str, tuple[float, deque[bytes]]] = {}  # ip -> (deadline, packets)
        self._negative: dict[str, float] = {}  # ip -> until when "not found" holds
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @property
    def service_ips(self) -> list[str]:
        return list(self._queues)

    def add(self, service_ip: str, packet: bytes, now: float) -> str:
        until = self._negative.get(service_ip)
        if until is not None:
            if now < until:
                return "unresolved"
            del self._negative[service_ip]
        entry = self._queues.get(service_ip)
        if self.count >= self.total or (entry is not None and len(entry[1]) >= self.per_ip):
            return "queue_full"
        self.count += 1
        if entry is None:
            self._queues[service_ip] = (now + self.timeout, deque([packet]))
            return "resolve"
        entry[1].append(packet)
        return "queued"

    def take(self, service_ip: str) -> list[bytes]:
        """Remove and return the packets waiting for service_ip."""
        entry = self._queues.pop(service_ip, None)
        if entry is None:
            return []
        self.count -= len(entry[1])
        return list(entry[1])

    def put_back(self, service_ip: str, packets: list[bytes], deadline: float) -> None:
        """Re-queue packets that still miss, keeping their deadline (no new Resolve)."""
        if packets:
            self._queues[service_ip] = (deadline, deque(packets))
            self.count += len(packets)

    def deadline(self, service_ip: str) -> float:
        entry = self._queues.get(service_ip)
        return entry[0] if entry is not None else 0.0

    def fail(self, service_ip: str, now: float) -> int:
        """The control side found nothing: drop the packets, refuse the IP for a while."""
        self._negative[service_ip] = now + self.negative_ttl
        return len(self.take(service_ip))

    def expire(self, now: float) -> int:
        """Drop the packets of misses not answered in time; return how many."""
        dropped = 0
        for service_ip in [ip for ip, (deadline, _) in self._queues.items() if deadline <= now]:
            dropped += len(self.take(service_ip))
        for service_ip in [ip for ip, until in self._negative.items() if until <= now]:
            del self._negative[service_ip]
        return dropped


# ---------------------------------------------------------------- peers


class Peers:
    """How to send a datagram to each peer's tunnel address: send callables, cached."""

    def __init__(self, bound: socket.socket, *, connect: bool, buffer_size: int) -> None:
        self._bound = bound
        self._connect = connect
        self._buffer_size = buffer_size
        self._sockets: dict[tuple[str, int], socket.socket] = {}
        self.senders: dict[tuple[str, int], Callable[[memoryview], int]] = {}
        self.frame_senders: dict[tuple[str, int], Callable[[list], int]] = {}

    def __len__(self) -> int:
        return len(self.senders)

    def sender(self, address: tuple[str, int]) -> Callable[[memoryview], int]:
        """The send callable for address (created on first use)."""
        send = self.senders.get(address)
        if send is None:
            send = self._connected(address) if self._connect else self._sendto(address)
            self.senders[address] = send
        return send

    def _connected(self, address: tuple[str, int]) -> Callable[[memoryview], int]:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        set_buffers(sock, self._buffer_size, receive=False)
        sock.setblocking(False)
        sock.connect(address)
        self._sockets[address] = sock
        return sock.send

    def frame_sender(self, address: tuple[str, int]) -> Callable[[list], int]:
        """A sendmsg(buffers) callable for address (gather I/O: no copy of the packet)."""
        send = self.frame_senders.get(address)
        if send is None:
            self.sender(address)
            sock = self._sockets.get(address)
            if sock is not None:
                send = sock.sendmsg
            else:
                sendmsg, target = self._bound.sendmsg, bound_address(self._bound, address)
                send = lambda buffers: sendmsg(buffers, (), 0, target)  # noqa: E731
            self.frame_senders[address] = send
        return send

    def _sendto(self, address: tuple[str, int]) -> Callable[[memoryview], int]:
        target = bound_address(self._bound, address)
        sendto = self._bound.sendto
        return lambda data: sendto(data, target)

    def retain(self, addresses: set[tuple[str, int]]) -> None:
        """Forget peers that are not in addresses (closing their sockets)."""
        for address in [a for a in self.senders if a not in addresses]:
            del self.senders[address]
            self.frame_senders.pop(address, None)
            sock = self._sockets.pop(address, None)
            if sock is not None:
                sock.close()

    def close(self) -> None:
        self.retain(set())


def bound_address(sock: socket.socket, address: tuple[str, int]) -> tuple[str, int]:
    """address as sock can send to it (IPv4 through a dual-stack IPv6 socket is mapped)."""
    if sock.family == socket.AF_INET6 and ":" not in address[0]:
        return (f"::ffff:{address[0]}", address[1])
    return address


def source_ip(address: tuple) -> str:
    """The sender's IP as node IPs are written (canonical, IPv4-mapped IPv6 reduced)."""
    host = address[0]
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return str(ip_address(host)) if ":" in host else host


def set_buffers(sock: socket.socket, size: int, *, receive: bool = True) -> None:
    """Large kernel buffers; the FORCE variants (root) go past net.core.[rw]mem_max."""
    options = [(SO_SNDBUFFORCE, socket.SO_SNDBUF)]
    if receive:
        options.append((SO_RCVBUFFORCE, socket.SO_RCVBUF))
    for forced, plain in options:
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


# ---------------------------------------------------------------- the loop


class PacketLoop:
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
    ) -> None:
        self.translator = translator
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
        self.peers = Peers(tunnel, connect=config.connect_peers, buffer_size=config.socket_buffer)
        self.pending = PendingPackets(
            per_ip=config.queue_per_ip,
            total=config.queue_total,
            timeout=config.resolve_timeout,
            negative_ttl=config.negative_ttl,
        )
        self.prober = probes.Prober(
            translator.rtt,
            interval=config.probe_interval,
            capabilities=probes.CAP_GSO if self.offload else 0,
            clock=clock,
        )
        self._gso_peers: set[tuple[str, int]] = set()  # peers that take GSO frames
        self._running = False
        self._next_report = 0.0
        self._epoll: select.epoll | None = None

    # ------------------------------------------------------------ running

    def run(self) -> None:
        """Serve until a Stop message, the control channel closing, or stop()."""
        self._epoll = epoll = select.epoll()
        handlers: dict[int, Callable[[], object]] = {
            self._tunnel.fileno(): self._on_tunnel,
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

    # ------------------------------------------------------------ hot paths

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
                self._queue_miss(verdict.service_ip, bytes(view[:n]))
        counts = self.counts
        counts["tun_packets_read"] += done
        counts["tunnel_packets_sent"] += sent
        counts["drop_tunnel_send"] += send_drops
        counts["tun_packets_written"] += written

    def _on_tunnel(self) -> None:
        """Drain up to batch datagrams from the tunnel; deliver packets for local IPs."""
        recv, buf, view = self._tunnel.recvfrom_into, self._buf, self._view
        incoming, write_tun, deliver = self.translator.incoming, self._tun_write, Action.DELIVER
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
                if incoming(buf, n).action is deliver:
                    written += write_tun(view[:n])
            elif buf[0] == GSO_MAGIC:
                written += self._on_gso_frame(n)
            else:
                self._on_control_datagram(view[:n], address)
        self.counts["tunnel_packets_received"] += done
        self.counts["tun_packets_written"] += written

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

    # ------------------------------------------------------------ TUN offload
    # The TUN hands out TCP segments of up to 64 KiB and partial checksums (the L4
    # checksum field holds the pseudo-header sum, NEEDS_CSUM). The translator fixes
    # checksums as ~(~field + delta); complementing the field before and after turns that
    # into field + delta, the right update of a partial sum. A peer that announced
    # CAP_GSO in its probe echoes gets [GSO_MAGIC][vnet header][packet] (our control
    # range of the tunnel, DESIGN.md §4) and its kernel segments on the TUN write; any
    # other peer gets ordinary packets, segmented and checksummed here.

    def _on_tun_offload(self) -> None:
        """_on_tun for a TUN with a virtio_net_hdr ahead of each packet."""
        readv, fd, bufs = os.readv, self._tun_fd, [self._vnet, self._buf]
        frame, buf, view, writev = self._frame, self._buf, self._view, os.writev
        outgoing, senders, gso_peers = self.translator.outgoing, self.peers.senders, self._gso_peers
        frame_senders = self.peers.frame_senders
        remote, miss = Action.REMOTE, Action.MISS
        done = sent = gso_sent = written = 0
        for _ in range(self.config.batch):
            try:
                n = readv(fd, bufs) - VNET_HDR_LEN
            except (BlockingIOError, InterruptedError):
                break
            done += 1
            flags = frame[1]
            if flags & NEEDS_CSUM:
                at = _csum_at(frame, n)
                if at < 0:
                    self.counts["drop_bad_offload"] += 1
                    continue
                buf[at] ^= 0xFF
                buf[at + 1] ^= 0xFF
                verdict = outgoing(buf, n)
                buf[at] ^= 0xFF
                buf[at + 1] ^= 0xFF
            else:
                verdict = outgoing(buf, n)
            if verdict.action is remote:
                address = verdict.address
                if address in gso_peers:
                    send_frame = frame_senders.get(address) or self.peers.frame_sender(address)
                    try:
                        send_frame([frame, view[:n]])
                        gso_sent += 1
                    except OSError as err:
                        sent += self._frame_failed(err, address, n)
                elif flags == 0 and frame[2] == GSO_NONE:
                    send = senders.get(address) or self.peers.sender(address)
                    try:
                        send(view[:n])
                        sent += 1
                    except OSError as err:
                        self._send_error(err, address)
                else:
                    sent += self._send_plain(address, n)
            elif verdict is LOCAL:
                written += self._write_vnet(writev, fd, view[:n])
            elif verdict.action is miss:
                for packet in self._plain_packets(n):
                    self._queue_miss(verdict.service_ip, packet)
        counts = self.counts
        counts["tun_packets_read"] += done
        counts["tunnel_packets_sent"] += sent
        counts["gso_frames_sent"] += gso_sent
        counts["tun_packets_written"] += written

    def _write_vnet(self, writev: Callable, fd: int, packet: memoryview) -> int:
        try:
            writev(fd, [self._vnet, packet])
            return 1
        except OSError as err:
            log.debug("TUN write refused a %d-byte packet: %s", len(packet), err)
            self.counts["drop_tun_write"] += 1
            return 0

    def _frame_failed(self, err: OSError, address: tuple[str, int], n: int) -> int:
        """A GSO frame could not go out: too large for a datagram -> segment it here."""
        if err.errno == errno.EMSGSIZE:
            return self._send_plain(address, n)
        self._send_error(err, address)
        return 0

    def _send_plain(self, address: tuple[str, int], n: int) -> int:
        """Send buf[:n] (with the vnet header in _frame) as ordinary packets."""
        send = self.peers.sender(address)
        sent = 0
        for packet in self._plain_packets(n):
            try:
                send(packet)
                sent += 1
            except OSError as err:
                self._send_error(err, address)
        return sent

    def _plain_packets(self, n: int) -> list[bytes]:
        """buf[:n] as ordinary packets: segmented if large, checksums complete."""
        flags, gso_type, _, gso_size, csum_start, csum_offset = VNET_HDR.unpack(self._vnet)
        if gso_type & ~GSO_ECN in (GSO_TCPV4, GSO_TCPV6):
            try:
                packets = segment_tcp(self._view[:n], gso_size)
            except ValueError as err:
                log.debug("cannot segment a packet from the TUN: %s", err)
                self.counts["drop_bad_offload"] += 1
                return []
            self.counts["segmented_packets"] += len(packets)
            return packets
        if flags & NEEDS_CSUM and not finish_checksum(self._buf, n, csum_start, csum_offset):
            self.counts["drop_bad_offload"] += 1
            return []
        return [bytes(self._view[:n])]

    def _on_gso_frame(self, n: int) -> int:
        """A GSO frame from a peer: translate its packet, write it with its vnet header."""
        buf, size = self._buf, n - GSO_FRAME_HEADER
        if not self.offload or size < 20:
            self.counts["drop_gso_unsupported" if not self.offload else "drop_bad_offload"] += 1
            return 0
        self.counts["gso_frames_received"] += 1
        if buf[1] & NEEDS_CSUM:
            at = _csum_at(buf, size)
            if at < 0:
                self.counts["drop_bad_offload"] += 1
                return 0
            at += GSO_FRAME_HEADER
            buf[at] ^= 0xFF
            buf[at + 1] ^= 0xFF
            verdict = self.translator.incoming(self._frame_packet, size)  # type: ignore[arg-type]
            buf[at] ^= 0xFF
            buf[at + 1] ^= 0xFF
        else:
            verdict = self.translator.incoming(self._frame_packet, size)  # type: ignore[arg-type]
        if verdict.action is not Action.DELIVER:
            return 0
        try:
            os.writev(self._tun_fd, [self._frame_vnet, self._frame_packet[:size]])  # type: ignore[arg-type]
            return 1
        except OSError as err:
            log.debug("TUN refused a GSO frame: %s", err)
            self.counts["drop_tun_write"] += 1
            return 0

    def _vnet_writer(self, fd: int) -> Callable[[memoryview], int]:
        """Write a plain packet to an offload TUN: an all-zero vnet header first."""
        writev, header = os.writev, ZERO_VNET_HDR
        return lambda packet: writev(fd, [header, packet])

    def _update_gso_peers(self) -> None:
        self._gso_peers.clear()
        if self.offload:
            self._gso_peers.update(self.prober.peers_with(probes.CAP_GSO))

    # ------------------------------------------------------------ misses

    def _queue_miss(self, service_ip: str, packet: bytes) -> None:
        outcome = self.pending.add(service_ip, packet, self._clock())
        if outcome == "resolve":
            self.counts["resolve_requests"] += 1
            self._send(Resolve(service_ip))
        elif outcome != "queued":
            self.counts["drop_" + outcome] += 1

    def _replay(self, service_ip: str) -> None:
        """Run the packets waiting for service_ip through the translator again."""
        deadline = self.pending.deadline(service_ip)
        still_missing = []
        for packet in self.pending.take(service_ip):
            n = len(packet)
            self._buf[:n] = packet
            verdict = self.translator.outgoing(self._buf, n)
            if verdict.action is Action.MISS:
                still_missing.append(packet)
            else:
                self._forward(verdict, n)
        self.pending.put_back(service_ip, still_missing, deadline)

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
        elif verdict is LOCAL:
            self.counts["tun_packets_written"] += self._tun_write(view)

    # ------------------------------------------------------------ control datagrams

    def _on_control_datagram(self, data: memoryview, address: tuple) -> None:
        self.counts["control_datagrams"] += 1
        if not data or data[0] != probes.MAGIC:
            self.counts["drop_bad_control"] += 1
            return
        echoes = self.prober.echoes
        echo = self.prober.handle(data, source_ip(address))
        if self.prober.echoes != echoes:
            self._update_gso_peers()
        if echo is not None:
            try:
                self._tunnel.sendto(echo, address)
            except OSError as err:
                self._send_error(err, None)

    def _send_probes(self, now: float) -> None:
        for datagram, address in self.prober.probes_due(now):
            try:
                self._tunnel.sendto(datagram, bound_address(self._tunnel, address))
            except OSError as err:
                self._send_error(err, address)

    # ------------------------------------------------------------ the control channel

    def _on_control(self) -> None:
        try:
            messages = self._control.receive()
        except ChannelClosed as err:
            log.info("data plane stopping: %s", err)
            self._running = False
            return
        for error in self._control.errors:
            self.counts["control_errors"] += 1
            log.error("bad message on the control channel: %s", error)
        self._control.errors.clear()
        for message in messages:
            self._handle(message)
        self._flush_control()

    def _handle(self, message: Message) -> None:
        if isinstance(message, Snapshot):
            self._apply_snapshot(message)
        elif isinstance(message, Resolved):
            self._resolved(message)
        elif isinstance(message, Stop):
            log.info("data plane stopping: asked to")
            self._running = False
        else:
            self.counts["control_errors"] += 1
            log.error("unexpected %s message from the control plane", message.TYPE)

    def _apply_snapshot(self, message: Snapshot) -> None:
        try:
            services, instances = message.entries()
            snapshot = build_snapshot(services, instances, message.node_ip)
        except (ChannelError, ValueError) as err:
            self.counts["snapshot_errors"] += 1
            log.error("snapshot refused, keeping the previous table: %s", err)
            return
        self.translator.set_snapshot(snapshot)
        self.counts["snapshots"] += 1
        addresses = {
            target.verdict.address
            for route in snapshot.routes.values()
            for target in route.targets.values()
            if target.verdict.address is not None
        }
        self.peers.retain(addresses)
        self.prober.set_peers(addresses)
        self._update_gso_peers()
        for service_ip in self.pending.service_ips:
            if ip_address(service_ip).packed in snapshot.routes:
                self._replay(service_ip)

    def _resolved(self, message: Resolved) -> None:
        if message.found:
            self._replay(message.service_ip)
        else:
            self.counts["drop_unresolved"] += self.pending.fail(message.service_ip, self._clock())

    def _send(self, message: Message) -> None:
        try:
            if not self._control.send(message):
                self.counts["control_dropped"] += 1
        except ChannelClosed as err:
            log.info("data plane stopping: %s", err)
            self._running = False
        self._watch_control_writes()

    def _flush_control(self) -> None:
        try:
            self._control.flush()
        except ChannelClosed:
            self._running = False
        self._watch_control_writes()

    def _watch_control_writes(self) -> None:
        """Wake up for EPOLLOUT on the control fd only while frames wait to be written."""
        if self._epoll is not None:
            events = select.EPOLLIN | (select.EPOLLOUT if self._control.pending else 0)
            self._epoll.modify(self._control.fileno(), events)

    # ------------------------------------------------------------ timers

    def _timers(self, now: float) -> None:
        """Expire misses (every tick); then once per report_interval the periodic work."""
        expired = self.pending.expire(now)
        self.counts["drop_resolve_timeout"] += expired
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
        self._send(Counters(self.counters(), dict(self.translator.rtt)))

    def counters(self) -> dict[str, int]:
        values = {**self.translator.counters, **self.counts}
        values["queued_packets"] = len(self.pending)
        values["queued_service_ips"] = len(self.pending.service_ips)
        values["peers"] = len(self.peers)
        values["probes_sent"] = self.prober.sent
        values["probe_echoes"] = self.prober.echoes
        values["drop_bad_probe"] = self.prober.bad
        return values


def _no_read(buf: bytearray) -> int | None:
    return None


def _csum_at(header: bytearray, n: int) -> int:
    """Where the partial checksum of an n-byte packet is (vnet header in header[1:11]).

    -1 if csum_start/csum_offset point outside the packet (never trust the wire).
    """
    at = (header[7] | header[8] << 8) + (header[9] | header[10] << 8)
    return at if 20 <= at <= n - 2 else -1


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
    "drop_bad_control",
    "resolve_requests",
    "control_datagrams",
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
