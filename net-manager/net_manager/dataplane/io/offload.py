"""The TUN offload path of the packet loop: TCP segments of up to 64 KiB from the TUN.

With TUN offload the TUN hands out TCP segments with partial checksums behind a
virtio_net_hdr. Peers that announce probes.CAP_GSO get them whole as GSO frames,
[GSO_MAGIC][virtio_net_hdr][packet], in the tunnel's control range, and write them to
their TUN with the header (their kernel segments); other peers (upstream nodes) get
ordinary packets, segmented and checksummed here (tun.segment_tcp / finish_checksum).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

from net_manager.dataplane.core.translate import LOCAL, Action, Verdict
from net_manager.dataplane.io import probes
from net_manager.dataplane.io.tun import (
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

log = logging.getLogger("net_manager.dataplane.io.loop")

GSO_MAGIC = 0xA7  # first byte of a GSO frame (first nibble neither 4 nor 6)
GSO_FRAME_HEADER = 1 + VNET_HDR_LEN


class OffloadPath:
    """PacketLoop's methods for offloaded TUN reads and GSO frames from peers."""

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
                    self._queue_miss(verdict, packet)
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

    def _on_gso_frame(self, n: int, sender: str) -> int:
        """A GSO frame from a peer: admit and translate its packet, write it with its vnet
        header. A caller not resolved yet: its packet waits as plain packets (segmented,
        checksums complete), like any tunnelled packet waiting for admission."""
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
            verdict = self._admit_frame(size, sender)
            buf[at] ^= 0xFF
            buf[at + 1] ^= 0xFF
        else:
            verdict = self._admit_frame(size, sender)
        if verdict.action is not Action.DELIVER:
            if verdict.action is Action.MISS:
                for packet in self._frame_plain_packets(size):
                    self._queue_admission(verdict, packet)
            return 0
        try:
            os.writev(self._tun_fd, [self._frame_vnet, self._frame_packet[:size]])  # type: ignore[arg-type]
            return 1
        except OSError as err:
            log.debug("TUN refused a GSO frame: %s", err)
            self.counts["drop_tun_write"] += 1
            return 0

    def _frame_plain_packets(self, size: int) -> list[bytes]:
        """The packet of the received GSO frame as ordinary packets (see _plain_packets)."""
        header = VNET_HDR.unpack(self._frame_vnet)
        flags, gso_type, _, gso_size, csum_start, csum_offset = header
        packet = bytearray(self._frame_packet[:size])
        if gso_type & ~GSO_ECN in (GSO_TCPV4, GSO_TCPV6):
            try:
                return segment_tcp(packet, gso_size)
            except ValueError as err:
                log.debug("cannot segment a GSO frame from a peer: %s", err)
        elif not flags & NEEDS_CSUM or finish_checksum(packet, size, csum_start, csum_offset):
            return [bytes(packet)]
        self.counts["drop_bad_offload"] += 1
        return []

    def _admit_frame(self, size: int, sender: str) -> Verdict:
        packet = self._frame_packet
        if self.config.admission:
            return self.translator.from_tunnel(packet, size, sender)  # type: ignore[arg-type]
        return self.translator.incoming(packet, size)  # type: ignore[arg-type]

    def _vnet_writer(self, fd: int) -> Callable[[memoryview], int]:
        """Write a plain packet to an offload TUN: an all-zero vnet header first."""
        writev, header = os.writev, ZERO_VNET_HDR
        return lambda packet: writev(fd, [header, packet])

    def _update_gso_peers(self) -> None:
        self._gso_peers.clear()
        if self.offload:
            self._gso_peers.update(self.prober.peers_with(probes.CAP_GSO))


def _csum_at(header: bytearray, n: int) -> int:
    """Where the partial checksum of an n-byte packet is (vnet header in header[1:11]).

    -1 if csum_start/csum_offset point outside the packet (never trust the wire).
    """
    at = (header[7] | header[8] << 8) + (header[9] | header[10] << 8)
    return at if 20 <= at <= n - 2 else -1
