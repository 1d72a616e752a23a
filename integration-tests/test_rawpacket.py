"""The raw-tunnel peer's packet rewriting: checked against scapy's own checksums."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6

from testbed.rawpacket import FragmentMap, parse, rewrite

NEW_SRC, NEW_DST = "10.30.0.7", "10.16.0.66"
NEW_SRC6, NEW_DST6 = "fdff::7", "fc00::102"


def checksums_of(data: bytes, version: int) -> tuple:
    """The packet's checksums as sent and as scapy computes them afresh."""
    packet = IP(data) if version == 4 else IPv6(data)
    l4 = packet[TCP] if TCP in packet else packet[UDP]
    sent = (packet.chksum if version == 4 else None, l4.chksum)
    if version == 4:
        del packet.chksum
    del l4.chksum
    fresh = IP(bytes(packet)) if version == 4 else IPv6(bytes(packet))
    fresh_l4 = fresh[TCP] if TCP in fresh else fresh[UDP]
    return sent, (fresh.chksum if version == 4 else None, fresh_l4.chksum)


@pytest.mark.parametrize(
    "original",
    [
        IP(src="10.16.0.2", dst="10.30.1.30") / TCP(sport=40000, dport=30443) / (b"x" * 101),
        IP(src="10.16.0.2", dst="10.30.1.30") / UDP(sport=40000, dport=30443) / b"hello",
        IPv6(src="fc00::2", dst="fdff:2000::1e") / TCP(sport=1, dport=2, flags="S"),
        IPv6(src="fc00::2", dst="fdff:2000::1e") / UDP(sport=1, dport=65535) / (b"y" * 77),
    ],
    ids=["tcp4", "udp4", "tcp6", "udp6"],
)
def test_rewritten_packets_keep_valid_checksums(original):
    data = bytes(original)
    packet = parse(data)
    assert packet is not None and packet.has_ports and not packet.is_fragment
    src, dst = (NEW_SRC, NEW_DST) if packet.version == 4 else (NEW_SRC6, NEW_DST6)
    out = rewrite(data, packet, src, dst)
    again = parse(out)
    assert (again.src, again.dst) == (src, dst)
    assert (again.sport, again.dport) == (packet.sport, packet.dport)
    sent, fresh = checksums_of(out, packet.version)
    assert sent == fresh


def test_a_udp_zero_checksum_stays_zero():
    original = IP(src="10.16.0.2", dst="10.30.1.30") / UDP(sport=1, dport=2, chksum=0) / b"z"
    data = bytes(original)
    out = rewrite(data, parse(data), NEW_SRC, NEW_DST)
    assert IP(out)[UDP].chksum == 0


@pytest.mark.parametrize("version", [4, 6])
def test_fragments_follow_the_first_and_reassemble_with_a_valid_checksum(version):
    if version == 4:
        whole = IP(src="10.16.0.2", dst="10.30.1.30", id=77) / UDP(sport=5, dport=6) / (b"f" * 4000)
        pieces = fragment(whole, fragsize=1400)
        src, dst = NEW_SRC, NEW_DST
    else:
        base = IPv6(src="fc00::2", dst="fdff:2000::1e") / IPv6ExtHdrFragment(id=77)
        pieces = fragment6(base / UDP(sport=5, dport=6) / (b"f" * 4000), 1400)
        src, dst = NEW_SRC6, NEW_DST6
    assert len(pieces) >= 3
    fragments = FragmentMap()
    out = []
    for piece in pieces:
        data = bytes(piece)
        packet = parse(data)
        assert packet.is_fragment
        if packet.has_ports:
            fragments.remember(packet, src, dst)
            out.append(rewrite(data, packet, src, dst))
        else:
            mapped = fragments.lookup(packet)
            assert mapped == (src, dst)
            out.append(rewrite(data, packet, *mapped))
    if version == 4:
        from scapy.layers.inet import defragment

        whole_again = defragment([IP(d) for d in out])[0]
        whole_again = IP(bytes(whole_again))
    else:
        from scapy.layers.inet6 import defragment6

        whole_again = IPv6(bytes(defragment6([IPv6(d) for d in out])))
    assert whole_again.src == src and whole_again.dst == dst
    assert bytes(whole_again[UDP].payload) == b"f" * 4000
    sent = whole_again[UDP].chksum
    del whole_again[UDP].chksum
    rebuilt = (IP if version == 4 else IPv6)(bytes(whole_again))
    assert rebuilt[UDP].chksum == sent


def test_a_later_fragment_without_its_first_is_not_mapped():
    whole = IP(src="10.16.0.2", dst="10.30.1.30", id=9) / UDP(sport=5, dport=6) / (b"f" * 3000)
    later = bytes(fragment(whole, fragsize=1400)[1])
    assert FragmentMap().lookup(parse(later)) is None


def test_not_ip_is_none():
    assert parse(b"\xa5" + bytes(15)) is None
    assert parse(b"") is None
