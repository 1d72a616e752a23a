"""packet.py: header parsing on byte-literal packets (built by scapy) and RFC 1624 updates."""

from __future__ import annotations

import struct
from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from net_manager.dataplane.core import packet
from net_manager.dataplane.core.packet import Header, address_delta, adjust, checksum, parse

V4 = {"src": "10.18.0.2", "dst": "10.30.1.30"}
V6 = {"src": "fc00::2", "dst": "fdff:2000::30"}


def packed(address: str) -> bytes:
    return ip_address(address).packed


def parsed(pkt: object) -> tuple[str | None, Header]:
    buf = bytearray(bytes(pkt))  # type: ignore[call-overload]
    h = Header()
    return parse(buf, len(buf), h), h


# name, packet, proto, sport, dport, offset of the pseudo-header checksum (from the IP start)
CASES = [
    ("v4 tcp", IP(**V4) / TCP(sport=34278, dport=30443), 6, 34278, 30443, 20 + 16),
    ("v4 udp", IP(**V4) / UDP(sport=5353, dport=53) / b"q", 17, 5353, 53, 20 + 6),
    ("v4 echo request", IP(**V4) / ICMP(type=8, id=77), 1, 77, 77, -1),
    ("v4 echo reply", IP(**V4) / ICMP(type=0, id=78), 1, 78, 78, -1),
    ("v4 options", IP(**V4, options=[b"\x01" * 4]) / TCP(sport=1, dport=2), 6, 1, 2, 24 + 16),
    ("v6 tcp", IPv6(**V6) / TCP(sport=34278, dport=30443), 6, 34278, 30443, 40 + 16),
    ("v6 udp", IPv6(**V6) / UDP(sport=5353, dport=53) / b"q", 17, 5353, 53, 40 + 6),
    ("v6 echo request", IPv6(**V6) / ICMPv6EchoRequest(id=79), 58, 79, 79, 40 + 2),
    ("v6 echo reply", IPv6(**V6) / ICMPv6EchoReply(id=80), 58, 80, 80, 40 + 2),
    (
        "v6 hop-by-hop + destination options",
        IPv6(**V6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(sport=3, dport=4),
        6,
        3,
        4,
        56 + 16,
    ),
    (
        "v6 routing header, no segments left",
        IPv6(**V6) / IPv6ExtHdrRouting(segleft=0) / UDP(sport=5, dport=6),
        17,
        5,
        6,
        48 + 6,
    ),
]


@pytest.mark.parametrize(
    "pkt, proto, sport, dport, l4_csum", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_parse_finds_ports_addresses_and_checksum(
    pkt: object, proto: int, sport: int, dport: int, l4_csum: int
) -> None:
    reason, h = parsed(pkt)
    assert reason is None
    assert (h.proto, h.sport, h.dport, h.l4_csum) == (proto, sport, dport, l4_csum)
    v4 = IP in pkt  # type: ignore[operator]
    src, dst = (V4 if v4 else V6).values()
    assert (h.version, h.src, h.dst) == (4 if v4 else 6, packed(src), packed(dst))
    assert h.addr_off == (12 if v4 else 8)
    assert h.l4 and h.frag_key is None


@pytest.mark.parametrize(
    "pkt, reason",
    [
        (IP(**V4) / ICMP(type=3, code=3), packet.UNSUPPORTED_ICMP),
        (IPv6(**V6) / ICMPv6DestUnreach(), packet.UNSUPPORTED_ICMP),
        (IP(**V4, proto=47) / b"gre-payload", packet.UNSUPPORTED_PROTOCOL),
        (IPv6(**V6, nh=1) / ICMP(type=8), packet.UNSUPPORTED_PROTOCOL),  # ICMPv4 inside v6
        (IP(**V4, proto=58) / ICMPv6EchoRequest(), packet.UNSUPPORTED_PROTOCOL),
        (
            IPv6(**V6) / IPv6ExtHdrRouting(addresses=["fdff::9"], segleft=1) / UDP(),
            packet.UNSUPPORTED_ROUTING,
        ),
    ],
    ids=["icmp4 unreachable", "icmp6 unreachable", "gre", "icmp4 in v6", "icmp6 in v4", "srh"],
)
def test_parse_names_unsupported_packets(pkt: object, reason: str) -> None:
    assert parsed(pkt)[0] == reason


def test_udp_zero_checksum_has_nothing_to_fix() -> None:
    reason, h = parsed(IP(**V4) / UDP(sport=1, dport=2, chksum=0) / b"x")
    assert reason is None and h.udp and h.l4_csum == -1


@pytest.mark.parametrize("pkt", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_every_truncation_is_malformed_never_an_exception(pkt: object) -> None:
    data = bytes(pkt)  # type: ignore[call-overload]
    for n in range(len(data)):
        buf = bytearray(data[:n])
        assert parse(buf, n, Header()) == packet.MALFORMED, n


def test_length_beyond_the_buffer_is_malformed() -> None:
    buf = bytearray(bytes(IP(**V4) / TCP()))
    assert parse(buf, len(buf) + 1, Header()) == packet.MALFORMED


def test_trailing_bytes_after_the_ip_length_are_ignored() -> None:
    buf = bytearray(bytes(IP(**V4) / UDP(sport=7, dport=8)) + b"\x00" * 10)
    h = Header()
    assert parse(buf, len(buf), h) is None and (h.sport, h.dport) == (7, 8)


@pytest.mark.parametrize("first_byte", [0x00, 0x75, 0x44], ids=["v0", "v7", "ihl 16"])
def test_bad_version_or_header_length_is_malformed(first_byte: int) -> None:
    buf = bytearray(bytes(IP(**V4) / TCP()))
    buf[0] = first_byte
    assert parse(buf, len(buf), Header()) == packet.MALFORMED


def test_ipv4_fragments() -> None:
    datagram = IP(**V4, id=4242) / UDP(sport=9, dport=10) / Raw(b"a" * 100)
    first, second = fragment(datagram, fragsize=64)
    reason, h = parsed(first)
    key = (packed(V4["src"]), packed(V4["dst"]), 4242, 17)
    assert reason is None and h.l4 and (h.sport, h.dport) == (9, 10) and h.frag_key == key
    reason, h = parsed(second)
    assert reason is None and not h.l4 and h.frag_key == key
    assert (h.sport, h.dport, h.l4_csum) == (0, 0, -1)


def test_ipv4_first_fragment_too_short_for_tcp_is_malformed() -> None:
    first = fragment(IP(**V4) / TCP(sport=1, dport=2) / Raw(b"b" * 64), fragsize=8)[0]
    assert parsed(first)[0] == packet.MALFORMED


def test_ipv4_later_fragment_of_another_protocol_is_unsupported() -> None:
    later = fragment(IP(**V4, proto=47) / Raw(b"c" * 100), fragsize=48)[1]
    assert parsed(later)[0] == packet.UNSUPPORTED_PROTOCOL


def test_ipv6_fragments() -> None:
    datagram = (
        IPv6(**V6) / IPv6ExtHdrFragment(id=0xABCDEF01) / UDP(sport=9, dport=10) / Raw(b"a" * 200)
    )
    first, second = fragment6(datagram, 150)[:2]
    key = (packed(V6["src"]), packed(V6["dst"]), 0xABCDEF01, 17)
    reason, h = parsed(first)
    assert reason is None and h.l4 and (h.sport, h.dport) == (9, 10) and h.frag_key == key
    reason, h = parsed(second)
    assert reason is None and not h.l4 and h.frag_key == key


def test_ipv6_atomic_fragment_is_a_whole_packet() -> None:
    reason, h = parsed(IPv6(**V6) / IPv6ExtHdrFragment(m=0, offset=0) / TCP(sport=1, dport=2))
    assert reason is None and h.l4 and h.frag_key is None and (h.sport, h.dport) == (1, 2)


def test_ipv6_two_fragment_headers_are_malformed() -> None:
    pkt = IPv6(**V6) / IPv6ExtHdrFragment(m=1) / IPv6ExtHdrFragment(m=1) / UDP()
    assert parsed(pkt)[0] == packet.MALFORMED


def test_ipv6_endless_extension_chain_is_malformed() -> None:
    pkt = IPv6(**V6)
    for _ in range(9):
        pkt = pkt / IPv6ExtHdrDestOpt()
    assert parsed(pkt / UDP())[0] == packet.MALFORMED


# ---------------------------------------------------------------- checksums


def reference_checksum(data: bytes) -> int:
    """RFC 1071, written out separately from packet.checksum()."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += int.from_bytes(data[i : i + 2], "big")
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@given(st.binary(max_size=200))
def test_checksum_matches_scapy(data: bytes) -> None:
    assert checksum(data) == scapy_checksum(data) == reference_checksum(data)


@given(
    st.sampled_from([4, 16]).flatmap(
        lambda n: st.tuples(st.binary(min_size=n, max_size=n), st.binary(min_size=n, max_size=n))
    ),
    st.binary(max_size=64),
)
def test_incremental_update_equals_full_recomputation(
    addresses: tuple[bytes, bytes], rest: bytes
) -> None:
    old, new = addresses
    buf = bytearray(struct.pack("!H", reference_checksum(old + rest)) + old + rest)
    buf[2 : 2 + len(new)] = new
    adjust(buf, 0, address_delta(old, new), udp=False)
    expected = reference_checksum(new + rest)
    if any(new + rest):  # ones' complement has two zeros: all-zero data verifies with both
        assert int.from_bytes(buf[:2]) == expected
        assert reference_checksum(bytes(buf)) == 0


def rewrite(old: bytes, new: bytes, rest: bytes, udp: bool) -> bytes:
    buf = bytearray(struct.pack("!H", reference_checksum(old + rest)) + new + rest)
    adjust(buf, 0, address_delta(old, new), udp)
    return bytes(buf[:2])


def test_udp_computed_zero_is_sent_as_ffff() -> None:
    old, new = b"\x00\x01", b"\x00\x02"
    rest = struct.pack("!H", 0xFFFD)  # new + rest sums to 0xFFFF: checksum 0
    assert reference_checksum(new + rest) == 0
    assert rewrite(old, new, rest, udp=True) == b"\xff\xff"
    assert rewrite(old, new, rest, udp=False) == b"\x00\x00"


def test_address_delta_needs_equal_even_lengths() -> None:
    with pytest.raises(ValueError, match="checksum delta"):
        address_delta(b"\x01\x02\x03\x04", b"\x01\x02")
