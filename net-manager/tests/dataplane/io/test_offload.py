"""tun.py's offload helpers: software segmentation and checksum completion, checked by scapy."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from net_manager.dataplane.core.packet import checksum
from net_manager.dataplane.io.tun import finish_checksum, ones_sum, segment_tcp

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes


def big_tcp(family: str, flags: str = "PA", payload: bytes = PAYLOAD) -> bytes:
    ip = (
        IP(src="10.30.0.2", dst="10.16.0.66", id=100)
        if family == "v4"
        else IPv6(src="fdff::2", dst="fc00::102")
    )
    return bytes(ip / TCP(sport=40000, dport=8080, seq=1000, flags=flags) / payload)


def valid(packet: bytes) -> bool:
    """scapy recomputes every checksum; the packet is valid if nothing changes."""
    parsed = IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)
    for layer in (IP, TCP, UDP):
        if layer in parsed:
            del parsed[layer].chksum
    return bytes(parsed.__class__(bytes(parsed))) == packet


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_segments_are_valid_packets_carrying_the_payload_in_order(family: str) -> None:
    segments = segment_tcp(big_tcp(family), 1398)
    assert len(segments) == 8  # 10240 / 1398, rounded up
    assert all(valid(s) for s in segments)
    layers = [(IP(s) if family == "v4" else IPv6(s))[TCP] for s in segments]
    assert b"".join(bytes(t.payload) for t in layers) == PAYLOAD
    assert [t.seq for t in layers] == [1000 + i * 1398 for i in range(8)]
    assert [str(t.flags) for t in layers] == ["A"] * 7 + ["PA"]


def test_ipv4_segments_get_consecutive_ids_and_own_lengths() -> None:
    segments = [IP(s) for s in segment_tcp(big_tcp("v4"), 4000)]
    assert [s.id for s in segments] == [100, 101, 102]
    assert [s.len for s in segments] == [4040, 4040, 2280]


def test_a_packet_smaller_than_the_segment_size_stays_whole() -> None:
    packet = big_tcp("v4", flags="S", payload=b"")
    assert segment_tcp(packet, 1400) == [packet]


@pytest.mark.parametrize("packet", [b"\x45" + bytes(10), bytes(IP() / UDP() / (b"x" * 50))])
def test_what_is_not_tcp_cannot_be_segmented(packet: bytes) -> None:
    with pytest.raises(ValueError, match="not plain TCP"):
        segment_tcp(packet, 1400)


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_finish_checksum_completes_a_partial_checksum(kind: str) -> None:
    l4 = TCP(sport=1, dport=2) if kind == "tcp" else UDP(sport=1, dport=2)
    full = bytes(IP(src="10.30.0.2", dst="10.16.0.66") / l4 / (b"odd" * 333))
    at = 20 + (16 if kind == "tcp" else 6)
    pseudo = full[12:20] + bytes([0, 6 if kind == "tcp" else 17]) + (len(full) - 20).to_bytes(2)
    partial = bytearray(full)
    partial[at : at + 2] = (~checksum(pseudo) & 0xFFFF).to_bytes(2, "big")  # what the kernel leaves
    assert finish_checksum(partial, len(partial), 20, at - 20)
    assert bytes(partial) == full


def test_finish_checksum_refuses_offsets_outside_the_packet() -> None:
    packet = bytearray(60)
    assert not finish_checksum(packet, 60, 20, 50)
    assert not finish_checksum(packet, 60, 0, 16)


def test_ones_sum_matches_the_reference_checksum() -> None:
    for data in (b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7", b"\xff\xff", b"\x12", bytes(100)):
        assert ~ones_sum(data) & 0xFFFF == checksum(data) or data == bytes(len(data))
