"""Read the headers of one IPv4/IPv6 packet in place, and adjust its checksums incrementally.

parse() finds, in a packet held in a bytearray, what the translator needs: addresses,
transport ports (the echo id for ICMP echo), where the checksums covering the addresses
live, and the fragment identity. It copies nothing but the two addresses and never
raises on bad input: it names a drop reason instead. Checksums are fixed with RFC 1624
(HC' = ~(~HC + ~m + m')) from a delta computed once per flow by address_delta().
Deciding what to rewrite is translate.py's job. No I/O.
"""

from __future__ import annotations

import struct

TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58

# Drop reasons found while parsing (also counter names, see translate.py).
MALFORMED = "malformed"
UNSUPPORTED_PROTOCOL = "unsupported_protocol"
UNSUPPORTED_ICMP = "unsupported_icmp"
UNSUPPORTED_ROUTING = "unsupported_routing_header"

_ECHO = {4: (8, 0), 6: (128, 129)}  # echo request, echo reply
_ICMP_PROTO = {4: ICMP, 6: ICMPV6}
_V6_SKIPPED = (0, 43, 60)  # hop-by-hop, routing, destination options
_V6_FRAGMENT = 44
_V6_MAX_EXTENSIONS = 8

_ADDRS4 = struct.Struct("!4s4s")
_ADDRS6 = struct.Struct("!16s16s")
_PORTS = struct.Struct("!HH")
_U32 = struct.Struct("!I")

FragmentKey = tuple[bytes, bytes, int, int]  # (src, dst, identification, protocol)


class Header:
    """What parse() found; one instance is reused for every packet (no allocation).

    l4 is False for a non-first fragment (no transport header: ports are 0).
    l4_csum is the offset of a checksum covering the pseudo-header, or -1 when there is
    none to fix (ICMPv4, UDP with checksum 0, non-first fragment).
    frag_key is None unless the packet is a fragment.
    """

    __slots__ = (
        "version",
        "proto",
        "src",
        "dst",
        "addr_off",
        "sport",
        "dport",
        "l4",
        "l4_csum",
        "udp",
        "frag_key",
    )

    def __init__(self) -> None:
        self.version = 0
        self.proto = 0
        self.src = b""
        self.dst = b""
        self.addr_off = 0
        self.sport = 0
        self.dport = 0
        self.l4 = False
        self.l4_csum = -1
        self.udp = False
        self.frag_key: FragmentKey | None = None


def parse(buf: bytearray, length: int, h: Header) -> str | None:
    """Fill h from the packet buf[:length]; return a drop reason, or None if usable."""
    if length < 20 or length > len(buf):
        return MALFORMED
    version = buf[0] >> 4
    if version == 4:
        return _parse_v4(buf, length, h)
    if version == 6:
        return _parse_v6(buf, length, h)
    return MALFORMED


def _parse_v4(buf: bytearray, length: int, h: Header) -> str | None:
    ihl = (buf[0] & 0x0F) << 2
    end = buf[2] << 8 | buf[3]
    if ihl < 20 or end < ihl or end > length:
        return MALFORMED
    proto = buf[9]
    h.version = 4
    h.proto = proto
    h.src, h.dst = _ADDRS4.unpack_from(buf, 12)
    h.addr_off = 12
    flags = buf[6] << 8 | buf[7]
    if flags & 0x3FFF:  # more fragments, or an offset
        h.frag_key = (h.src, h.dst, buf[4] << 8 | buf[5], proto)
        if flags & 0x1FFF:
            return _non_first_fragment(h, 4)
    else:
        h.frag_key = None
    return _parse_l4(buf, ihl, end, proto, h)


def _parse_v6(buf: bytearray, length: int, h: Header) -> str | None:
    if length < 40:
        return MALFORMED
    end = 40 + (buf[4] << 8 | buf[5])
    if end > length:
        return MALFORMED
    h.version = 6
    h.src, h.dst = _ADDRS6.unpack_from(buf, 8)
    h.addr_off = 8
    h.frag_key = None
    nh = buf[6]
    off = 40
    for _ in range(_V6_MAX_EXTENSIONS):
        if nh in _V6_SKIPPED:
            if off + 8 > end:
                return MALFORMED
            if nh == 43 and buf[off + 3] != 0:  # segments left: dst is not the final one
                return UNSUPPORTED_ROUTING
            nh, off = buf[off], off + ((buf[off + 1] + 1) << 3)
        elif nh == _V6_FRAGMENT:
            if off + 8 > end or h.frag_key is not None:
                return MALFORMED
            inner = buf[off]
            offset_flags = buf[off + 2] << 8 | buf[off + 3]
            if offset_flags & 0xFFF9:  # an offset or more fragments: not an atomic fragment
                h.frag_key = (h.src, h.dst, _U32.unpack_from(buf, off + 4)[0], inner)
                if offset_flags & 0xFFF8:
                    h.proto = inner
                    return _non_first_fragment(h, 6)
            nh, off = inner, off + 8
        else:
            h.proto = nh
            return _parse_l4(buf, off, end, nh, h)
    return MALFORMED


def _non_first_fragment(h: Header, version: int) -> str | None:
    h.l4 = False
    h.sport = h.dport = 0
    h.l4_csum = -1
    h.udp = False
    # An IPv6 fragment names the first header of the fragmentable part, maybe an extension.
    if version == 4 and h.proto not in (TCP, UDP, ICMP):
        return UNSUPPORTED_PROTOCOL
    return None


def _parse_l4(buf: bytearray, l4: int, end: int, proto: int, h: Header) -> str | None:
    room = end - l4
    h.l4 = True
    h.udp = False
    if proto == TCP:
        if room < 20:
            return MALFORMED
        h.sport, h.dport = _PORTS.unpack_from(buf, l4)
        h.l4_csum = l4 + 16
    elif proto == UDP:
        if room < 8:
            return MALFORMED
        h.sport, h.dport = _PORTS.unpack_from(buf, l4)
        h.udp = True
        # Checksum 0 means "none" (IPv4); left as is rather than turned into a wrong value.
        h.l4_csum = l4 + 6 if buf[l4 + 6] | buf[l4 + 7] else -1
    elif proto == _ICMP_PROTO[h.version]:
        if room < 8:
            return MALFORMED
        if buf[l4] not in _ECHO[h.version]:
            return UNSUPPORTED_ICMP
        h.sport = h.dport = buf[l4 + 4] << 8 | buf[l4 + 5]
        h.l4_csum = l4 + 2 if h.version == 6 else -1  # ICMPv4 does not cover the addresses
    else:
        return UNSUPPORTED_PROTOCOL
    return None


def address_delta(old: bytes, new: bytes) -> int:
    """The folded ones-complement sum of ~old + new, 16-bit words (RFC 1624 eqn 3)."""
    if len(old) != len(new) or len(old) % 2:
        raise ValueError(f"cannot compute a checksum delta from {old.hex()} to {new.hex()}")
    total = 0
    for i in range(0, len(old), 2):
        total += (~(old[i] << 8 | old[i + 1]) & 0xFFFF) + (new[i] << 8 | new[i + 1])
    return _fold(total)


def adjust(buf: bytearray, offset: int, delta: int, udp: bool) -> None:
    """Apply a delta from address_delta() to the checksum at buf[offset:offset+2]."""
    x = (~(buf[offset] << 8 | buf[offset + 1]) & 0xFFFF) + delta
    x = ~((x & 0xFFFF) + (x >> 16)) & 0xFFFF  # both terms <= 0xFFFF: one fold suffices
    if udp and x == 0:
        x = 0xFFFF  # UDP sends a computed 0 as 0xFFFF; 0 would mean "no checksum"
    buf[offset] = x >> 8
    buf[offset + 1] = x & 0xFF


def checksum(data: bytes | bytearray) -> int:
    """The internet checksum (RFC 1071) of data; for building packets, not the hot path."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    return ~_fold(total) & 0xFFFF


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total
