"""Packet rewriting for the raw-tunnel peer (rawpeer.py): bytes in, bytes out.

Independent of the net manager's packet core on purpose: the peer plays an upstream
node, so the tests check our node against a second implementation of the wire format,
not against itself. What it covers is what upstream's proxy handles (reference §6.3,
§6.4): IPv4 and IPv6 packets carrying TCP or UDP, addresses rewritten, IP and L4
checksums updated (incrementally: only the addresses change, so the L4 checksum stays
right even for the first fragment of a datagram). Unlike upstream it also carries
fragments: the first one (with the ports) decides the rewrite, the later ones (without
ports) get the same one through `FragmentMap`. IPv6 extension headers other than a
fragment header are not parsed (such packets count as "not TCP/UDP").
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

TCP, UDP = 6, 17
IPV6_FRAGMENT = 44


@dataclass(frozen=True)
class Packet:
    version: int  # 4 or 6
    proto: int  # the transport protocol (of the whole datagram, for a fragment)
    src: str
    dst: str
    sport: int  # -1 when this packet carries no transport header (a later fragment)
    dport: int
    l4: int  # offset of the TCP/UDP header in the packet, -1 if it carries none
    fragment_id: int  # -1: not a fragment

    @property
    def is_fragment(self) -> bool:
        return self.fragment_id >= 0

    @property
    def has_ports(self) -> bool:
        return self.l4 >= 0


def parse(data: bytes) -> Packet | None:
    """The packet's addresses, protocol and ports; None if it is not IPv4/IPv6 or is cut."""
    if not data:
        return None
    version = data[0] >> 4
    if version == 4 and len(data) >= 20:
        ihl = (data[0] & 0x0F) * 4
        if ihl < 20 or len(data) < ihl:
            return None
        proto = data[9]
        flags = int.from_bytes(data[6:8], "big")
        offset = (flags & 0x1FFF) * 8
        fragment_id = int.from_bytes(data[4:6], "big") if flags & 0x2000 or offset else -1
        src, dst = data[12:16], data[16:20]
        l4 = ihl if offset == 0 else -1
    elif version == 6 and len(data) >= 40:
        proto = data[6]
        src, dst = data[8:24], data[24:40]
        l4, fragment_id = 40, -1
        if proto == IPV6_FRAGMENT:
            if len(data) < 48:
                return None
            proto = data[40]
            fragment_id = int.from_bytes(data[44:48], "big")
            offset = (int.from_bytes(data[42:44], "big") >> 3) * 8
            l4 = 48 if offset == 0 else -1
    else:
        return None
    sport = dport = -1
    if l4 >= 0 and proto in (TCP, UDP) and len(data) >= l4 + 8:
        sport, dport = struct.unpack_from("!HH", data, l4)
    else:
        l4 = -1
    return Packet(
        version,
        proto,
        str(ipaddress.ip_address(bytes(src))),
        str(ipaddress.ip_address(bytes(dst))),
        sport,
        dport,
        l4,
        fragment_id,
    )


def _words(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes) -> int:
    return ~_fold(_words(data)) & 0xFFFF


def adjusted_checksum(checksum: int, old: bytes, new: bytes) -> int:
    """The checksum after `old` became `new` inside the covered data (RFC 1624, eqn. 3)."""
    total = (~checksum & 0xFFFF) + (~_fold(_words(old)) & 0xFFFF) + _words(new)
    return ~_fold(total) & 0xFFFF


def rewrite(data: bytes, packet: Packet, src: str, dst: str) -> bytes:
    """The packet with source and destination replaced, every checksum still right."""
    out = bytearray(data)
    new = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    if packet.version == 4:
        old = bytes(out[12:20])
        out[12:20] = new
        ihl = (out[0] & 0x0F) * 4
        out[10:12] = b"\x00\x00"
        out[10:12] = internet_checksum(bytes(out[:ihl])).to_bytes(2, "big")
    else:
        old = bytes(out[8:40])
        out[8:40] = new
    if packet.has_ports:
        at = packet.l4 + (16 if packet.proto == TCP else 6)
        checksum = int.from_bytes(out[at : at + 2], "big") if len(out) >= at + 2 else -1
        if checksum >= 0 and not (packet.proto == UDP and checksum == 0):
            fixed = adjusted_checksum(checksum, old, new)
            if packet.proto == UDP and fixed == 0:
                fixed = 0xFFFF  # zero means "no checksum" in UDP
            out[at : at + 2] = fixed.to_bytes(2, "big")
    return bytes(out)


class FragmentMap:
    """Which rewrite the first fragment of a datagram got, for its later fragments.

    Keyed by (source, destination, protocol, fragment id) as the packet arrived;
    entries live `ttl` seconds, at most `limit` of them (the oldest go first).
    """

    def __init__(self, ttl: float = 5.0, limit: int = 1024) -> None:
        self.ttl = ttl
        self.limit = limit
        self._entries: OrderedDict[tuple, tuple[str, str, float]] = OrderedDict()

    @staticmethod
    def key(packet: Packet) -> tuple:
        return (packet.src, packet.dst, packet.proto, packet.fragment_id)

    def remember(self, packet: Packet, src: str, dst: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._entries[self.key(packet)] = (src, dst, now + self.ttl)
        self._entries.move_to_end(self.key(packet))
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def lookup(self, packet: Packet, now: float | None = None) -> tuple[str, str] | None:
        now = time.monotonic() if now is None else now
        found = self._entries.get(self.key(packet))
        if found is None or found[2] < now:
            return None
        return found[0], found[1]
