"""translate.py: packets built by scapy go through Translators; the expected bytes are the
same packets re-addressed by scapy with every checksum recomputed from scratch."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrFragment,
    fragment6,
)
from scapy.packet import Packet, Raw

from net_manager.dataplane.core import (
    DELIVER,
    LOCAL,
    Action,
    Endpoint,
    ServiceEntry,
    Snapshot,
    Translator,
    Verdict,
    build_snapshot,
)

NODE_A, PORT_A = "131.1.0.1", 50103
NODE_B, PORT_B = "131.1.21.5", 55301
X1 = "X.default.X1.default"
X3 = "X.default.X3.default"
X1_0 = Endpoint(X1, 0, "10.18.0.2", "fc00::2", "10.30.0.2", "fdff::2", NODE_A, PORT_A)
X3_0 = Endpoint(X3, 0, "10.18.0.66", "fc00::102", "10.30.0.6", "fdff::6", NODE_B, PORT_B)
X3_1_ON_A = Endpoint(X3, 1, "10.18.0.3", "fc00::3", "10.30.0.7", "fdff::7", NODE_A, PORT_A)
X3_RR = ServiceEntry("10.30.1.30", "fdff:2000::30", "RR", (X3_0,))
X1_0_IP = ServiceEntry("10.30.0.2", "fdff::2", "instance_ip", (X1_0,))

FAMILIES = {
    # client ns, client instance, X3 RR, server ns, server instance
    "v4": ("10.18.0.2", "10.30.0.2", "10.30.1.30", "10.18.0.66", "10.30.0.6"),
    "v6": ("fc00::2", "fdff::2", "fdff:2000::30", "fc00::102", "fdff::6"),
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def node_a(**kwargs: Any) -> Translator:
    return Translator(build_snapshot([X3_RR], [X1_0], NODE_A), **kwargs)


def node_b(**kwargs: Any) -> Translator:
    return Translator(build_snapshot([X1_0_IP], [X3_0], NODE_B), **kwargs)


def ip(family: str, src: str, dst: str, **kwargs: Any) -> Packet:
    return IP(src=src, dst=dst, **kwargs) if family == "v4" else IPv6(src=src, dst=dst)


def transport(family: str, kind: str, request: bool) -> Packet:
    client, server = 34278, 30443
    sport, dport = (client, server) if request else (server, client)
    if kind == "tcp":
        return TCP(sport=sport, dport=dport, flags="S" if request else "SA", seq=7) / b"hello"
    if kind == "udp":
        return UDP(sport=sport, dport=dport) / b"datagram"
    if family == "v4":
        return ICMP(type=8 if request else 0, id=0x4242, seq=1) / b"ping"
    echo = ICMPv6EchoRequest if request else ICMPv6EchoReply
    return echo(id=0x4242, seq=1) / b"ping"


def request(family: str, kind: str) -> Packet:
    client_ns, _, service, _, _ = FAMILIES[family]
    return ip(family, client_ns, service) / transport(family, kind, True)


def reply(family: str, kind: str) -> Packet:
    client_ns, _, _, _, server_instance = FAMILIES[family]
    return ip(family, server_instance, client_ns) / transport(family, kind, False)


def readdress(pkt: Packet, src: str, dst: str) -> bytes:
    """pkt with other addresses, every checksum recomputed by scapy (a UDP 0 stays 0)."""
    copy = pkt.copy()
    layer = copy[IP] if IP in copy else copy[IPv6]
    layer.src, layer.dst = src, dst
    if IP in copy:
        del copy[IP].chksum
    if TCP in copy:
        del copy[TCP].chksum
    if UDP in copy and copy[UDP].chksum != 0:
        del copy[UDP].chksum
    for echo in (ICMP, ICMPv6EchoRequest, ICMPv6EchoReply):
        if echo in copy:
            field = "chksum" if echo is ICMP else "cksum"
            delattr(copy[echo], field)
    return bytes(copy)


def run(method: Any, pkt: Packet | bytes) -> tuple[Verdict, bytes]:
    """Call outgoing/incoming like the loop: the packet in a larger preallocated buffer."""
    data = bytes(pkt)
    buf = bytearray(data) + bytearray(64)
    verdict = method(buf, len(data))
    assert isinstance(verdict, Verdict)
    return verdict, bytes(buf[: len(data)])


CASES = [(family, kind) for family in FAMILIES for kind in ("tcp", "udp", "echo")]
IDS = [f"{family} {kind}" for family, kind in CASES]


# ---------------------------------------------------------------- the translation


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_outgoing_goes_from_the_instance_ip_to_the_endpoint(family: str, kind: str) -> None:
    _, client_instance, _, server_ns, _ = FAMILIES[family]
    pkt = request(family, kind)
    verdict, wire = run(node_a().outgoing, pkt)
    assert verdict.action is Action.REMOTE and verdict.address == (NODE_B, PORT_B)
    assert wire == readdress(pkt, client_instance, server_ns)


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_a_reply_comes_back_from_the_service_ip(family: str, kind: str) -> None:
    client_ns, _, service, _, _ = FAMILIES[family]
    a = node_a()
    run(a.outgoing, request(family, kind))
    pkt = reply(family, kind)
    verdict, delivered = run(a.incoming, pkt)
    assert verdict is DELIVER
    assert delivered == readdress(pkt, service, client_ns)


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_the_server_side_gets_requests_unchanged(family: str, kind: str) -> None:
    _, client_instance, _, server_ns, _ = FAMILIES[family]
    pkt = readdress(request(family, kind), client_instance, server_ns)
    verdict, delivered = run(node_b().incoming, pkt)
    assert verdict is DELIVER and delivered == pkt


@pytest.mark.parametrize("family", FAMILIES)
def test_seed_example_end_to_end_through_two_nodes(family: str) -> None:
    """X1.0 on node A talks to X3's RR IP; X3.0 on node B answers (seed 003)."""
    client_ns, client_instance, service, server_ns, server_instance = FAMILIES[family]
    a, b = node_a(), Translator(build_snapshot([], [X3_0], NODE_B))

    syn = ip(family, client_ns, service) / TCP(sport=34278, dport=30443, flags="S", seq=1000)
    verdict, wire = run(a.outgoing, syn)
    assert verdict.address == (NODE_B, PORT_B)
    assert wire == readdress(syn, client_instance, server_ns)
    verdict, at_server = run(b.incoming, wire)
    assert verdict is DELIVER and at_server == wire  # X3.0 sees X1.0's instance IP

    synack = ip(family, server_ns, client_instance) / TCP(
        sport=30443, dport=34278, flags="SA", seq=5000, ack=1001
    )
    verdict, _ = run(b.outgoing, synack)
    assert verdict.action is Action.MISS and verdict.service_ip == client_instance
    b.set_snapshot(build_snapshot([X1_0_IP], [X3_0], NODE_B))  # control resolved it
    verdict, wire = run(b.outgoing, synack)
    assert verdict.address == (NODE_A, PORT_A)
    assert wire == readdress(synack, server_instance, client_ns)
    verdict, at_client = run(a.incoming, wire)
    assert verdict is DELIVER
    assert at_client == readdress(synack, service, client_ns)  # from the address it called

    ack = ip(family, client_ns, service) / TCP(
        sport=34278, dport=30443, flags="A", seq=1001, ack=5001
    )
    verdict, wire = run(a.outgoing, ack)
    assert verdict.address == (NODE_B, PORT_B) and wire == readdress(
        ack, client_instance, server_ns
    )
    assert a.used_jobs == {X3} and b.used_jobs == {X1}
    assert a.counters["flows"] == 1 and b.counters["flows"] == 1


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_local_endpoint_is_delivered_here_reply_translated_back(family: str, kind: str) -> None:
    client_ns, client_instance, service, _, _ = FAMILIES[family]
    local_ns = "10.18.0.3" if family == "v4" else "fc00::3"
    rr = ServiceEntry("10.30.1.30", "fdff:2000::30", "RR", (X3_1_ON_A,))
    a = Translator(build_snapshot([rr, X1_0_IP], [X1_0, X3_1_ON_A], NODE_A))
    pkt = request(family, kind)
    verdict, looped = run(a.outgoing, pkt)
    assert verdict is LOCAL and looped == readdress(pkt, client_instance, local_ns)

    answer = ip(family, local_ns, client_instance) / transport(family, kind, False)
    verdict, looped = run(a.outgoing, answer)
    assert verdict is LOCAL
    assert looped == readdress(answer, service, client_ns)  # as a peer's incoming() would
    verdict, again = run(a.incoming, looped)  # the loop may pass it through incoming() too
    assert verdict is DELIVER and again == looped


@pytest.mark.parametrize("family", FAMILIES)
def test_fragments_to_a_local_endpoint(family: str) -> None:
    client_ns, client_instance, service, _, _ = FAMILIES[family]
    local_ns = "10.18.0.3" if family == "v4" else "fc00::3"
    rr = ServiceEntry("10.30.1.30", "fdff:2000::30", "RR", (X3_1_ON_A,))
    a = Translator(build_snapshot([rr, X1_0_IP], [X1_0, X3_1_ON_A], NODE_A))
    datagram = big_request(family, "udp")
    expected = split(family, readdress(datagram, client_instance, local_ns))
    for part, want in zip(split(family, datagram), expected, strict=True):
        assert run(a.outgoing, part) == (LOCAL, want)
    answer = big(family, "udp", local_ns, client_instance, request=False)
    expected = split(family, readdress(answer, service, client_ns))
    for part, want in zip(split(family, answer), expected, strict=True):
        assert run(a.outgoing, part) == (LOCAL, want)


def test_local_endpoint_whose_namespace_ip_is_not_local_is_dropped() -> None:
    stray = Endpoint(X3, 5, "10.18.0.9", "", "10.30.0.9", "", NODE_A, PORT_A)
    rr = ServiceEntry("10.30.1.30", "", "RR", (stray,))
    a = Translator(build_snapshot([rr], [X1_0], NODE_A))
    verdict, _ = run(a.outgoing, request("v4", "udp"))
    assert verdict.action is Action.DROP and verdict.reason == "not_for_us"


def test_flow_is_reused_for_every_packet() -> None:
    a = node_a()
    for _ in range(5):
        verdict, _ = run(a.outgoing, request("v4", "tcp"))
        assert verdict.address == (NODE_B, PORT_B)
    assert a.counters["flows_created"] == 1 and a.counters["packets_out"] == 5


# ---------------------------------------------------------------- checksum corner cases


def test_udp_over_ipv4_without_checksum_stays_without() -> None:
    a = node_a()
    pkt = IP(src="10.18.0.2", dst="10.30.1.30") / UDP(sport=34278, dport=30443, chksum=0) / b"x"
    _, wire = run(a.outgoing, pkt)
    assert wire[26:28] == b"\x00\x00" and wire == readdress(pkt, "10.30.0.2", "10.18.0.66")
    back = IP(src="10.30.0.6", dst="10.18.0.2") / UDP(sport=30443, dport=34278, chksum=0) / b"y"
    _, delivered = run(a.incoming, back)
    assert delivered[26:28] == b"\x00\x00"
    assert delivered == readdress(back, "10.30.1.30", "10.18.0.2")


def test_udp_checksum_that_computes_to_zero_is_sent_as_ffff() -> None:
    translated = IP(src="10.30.0.2", dst="10.18.0.66") / UDP(sport=1, dport=2) / b"\x00\x00"
    raw = bytes(translated)
    # A payload word equal to this checksum makes the translated datagram sum to 0xFFFF.
    payload = raw[26:28]
    pkt = IP(src="10.18.0.2", dst="10.30.1.30") / UDP(sport=1, dport=2) / payload
    _, wire = run(node_a().outgoing, pkt)
    assert wire[26:28] == b"\xff\xff"
    assert wire == readdress(pkt, "10.30.0.2", "10.18.0.66")


def test_a_wrong_checksum_stays_wrong() -> None:
    pkt = IP(src="10.18.0.2", dst="10.30.1.30") / TCP(sport=1, dport=2, chksum=0x1234)
    _, wire = run(node_a().outgoing, pkt)
    assert wire != readdress(pkt, "10.30.0.2", "10.18.0.66")
    assert TCP(wire[20:]).chksum != TCP(readdress(pkt, "10.30.0.2", "10.18.0.66")[20:]).chksum


# ---------------------------------------------------------------- drops, misses, counters


def drop_reason(verdict: Verdict) -> str:
    assert verdict.action is Action.DROP
    return verdict.reason


@pytest.mark.parametrize(
    "pkt, reason",
    [
        (IP(src="10.18.0.2", dst="10.18.0.66") / TCP(), "not_service"),
        (IP(src="10.18.0.2", dst="8.8.8.8") / UDP(), "not_service"),
        (IPv6(src="fc00::2", dst="fc00::102") / UDP(), "not_service"),
        (IP(src="10.18.0.9", dst="10.30.1.30") / TCP(), "unknown_sender"),
        (IP(src="10.18.0.9", dst="10.30.9.9") / TCP(), "unknown_sender"),
        (IP(src="10.18.0.2", dst="10.30.1.30") / ICMP(type=3), "unsupported_icmp"),
        (IPv6(src="fc00::2", dst="fdff:2000::30") / ICMPv6DestUnreach(), "unsupported_icmp"),
        (IP(src="10.18.0.2", dst="10.30.1.30", proto=132) / b"sctp", "unsupported_protocol"),
        (b"\x45" + b"\x00" * 30, "malformed"),
        (b"", "malformed"),
    ],
)
def test_outgoing_drops_with_a_reason_and_a_counter(pkt: Packet | bytes, reason: str) -> None:
    a = node_a()
    verdict, _ = run(a.outgoing, pkt)
    assert drop_reason(verdict) == reason
    assert a.counters[f"drop_{reason}"] == 1 and a.counters["packets_out"] == 0


@pytest.mark.parametrize(
    "pkt, reason",
    [
        (IP(src="10.30.0.6", dst="10.18.0.99") / TCP(), "not_for_us"),
        (IP(src="10.30.0.6", dst="10.30.1.30") / TCP(), "not_for_us"),
        (IPv6(src="fdff::6", dst="fc00::99") / UDP(), "not_for_us"),
        (IP(src="10.30.0.6", dst="10.18.0.2") / ICMP(type=5), "unsupported_icmp"),
        (b"\x60" + b"\x00" * 50, "malformed"),
    ],
)
def test_incoming_drops_with_a_reason_and_a_counter(pkt: Packet | bytes, reason: str) -> None:
    a = node_a()
    verdict, _ = run(a.incoming, pkt)
    assert drop_reason(verdict) == reason
    assert a.counters[f"drop_{reason}"] == 1 and a.counters["packets_in"] == 0


@pytest.mark.parametrize(
    "src, dst, service_ip",
    [("10.18.0.2", "10.30.4.4", "10.30.4.4"), ("fc00::2", "fdff:0:0::0:44", "fdff::44")],
)
def test_unknown_service_ip_is_a_miss(src: str, dst: str, service_ip: str) -> None:
    a = node_a()
    pkt = (IP if ":" not in src else IPv6)(src=src, dst=dst) / UDP(sport=1, dport=2)
    verdict, untouched = run(a.outgoing, pkt)
    assert verdict.action is Action.MISS and verdict.service_ip == service_ip
    assert untouched == bytes(pkt)  # the loop queues it and tries again after resolving
    assert a.counters["misses"] == 1 and a.used_jobs == set()


def test_service_without_endpoints_is_dropped_but_still_used() -> None:
    only_v4 = Endpoint(X3, 2, "10.18.0.70", "", "10.30.0.8", "", NODE_B, PORT_B)
    services = [
        ServiceEntry("10.30.1.31", "fdff:2000::31", "RR", ()),
        ServiceEntry("10.30.1.32", "fdff:2000::32", "RR", (only_v4,)),
    ]
    a = Translator(build_snapshot(services, [X1_0], NODE_A))
    for dst in ("10.30.1.31", "fdff:2000::31", "fdff:2000::32"):
        pkt = (IP if "." in dst else IPv6)(src="10.18.0.2" if "." in dst else "fc00::2", dst=dst)
        assert drop_reason(run(a.outgoing, pkt / UDP())[0]) == "no_endpoints"
    verdict, _ = run(a.outgoing, IP(src="10.18.0.2", dst="10.30.1.32") / UDP())
    assert verdict.address == (NODE_B, PORT_B)
    assert a.counters["drop_no_endpoints"] == 3


def test_counters_and_used_jobs() -> None:
    a = node_a()
    sizes = [len(run(a.outgoing, request("v4", "udp"))[1]) for _ in range(3)]
    got = run(a.incoming, reply("v4", "udp"))[1]
    counters = a.counters
    assert (counters["packets_out"], counters["bytes_out"]) == (3, sum(sizes))
    assert (counters["packets_in"], counters["bytes_in"]) == (1, len(got))
    assert a.used_jobs == {X3}
    a.used_jobs.clear()  # the loop drains it
    run(a.incoming, reply("v4", "udp"))
    assert a.used_jobs == set()  # replies do not count as use
    run(a.outgoing, request("v4", "udp"))
    assert a.used_jobs == {X3}


# ---------------------------------------------------------------- flow lifecycle


def test_idle_flows_expire_and_replies_keep_them_alive() -> None:
    clock = FakeClock()
    a = node_a(clock=clock, idle_timeout=60)
    run(a.outgoing, request("v4", "udp"))
    for _ in range(3):  # the server streams; the client stays silent
        clock.now += 50
        assert a.expire() == 0
        assert run(a.incoming, reply("v4", "udp"))[1][12:16] == bytes([10, 30, 1, 30])
    clock.now += 61
    assert a.expire() == 1 and a.counters["flows"] == 0
    late = reply("v4", "udp")
    assert run(a.incoming, late)[1] == bytes(late)  # forgotten: delivered unchanged


def test_a_full_flow_table_refuses_new_flows_until_expiry() -> None:
    clock = FakeClock()
    a = node_a(clock=clock, max_flows=2, flow_quota=3, idle_timeout=10)
    for sport in (1, 2):
        pkt = IP(src="10.18.0.2", dst="10.30.1.30") / UDP(sport=sport, dport=53)
        assert run(a.outgoing, pkt)[0].action is Action.REMOTE
    third = IP(src="10.18.0.2", dst="10.30.1.30") / UDP(sport=3, dport=53)
    assert drop_reason(run(a.outgoing, third)[0]) == "flow_table_full"
    first_again = IP(src="10.18.0.2", dst="10.30.1.30") / UDP(sport=1, dport=53)
    assert run(a.outgoing, first_again)[0].action is Action.REMOTE  # old flows still work
    clock.now += 11
    a.expire()
    assert run(a.outgoing, third)[0].action is Action.REMOTE


def test_unrelated_table_change_keeps_flows() -> None:
    a = node_a()
    run(a.outgoing, request("v4", "tcp"))
    other = ServiceEntry("10.30.2.2", "", "RR", (X3_0,))
    a.set_snapshot(build_snapshot([X3_RR, other], [X1_0], NODE_A))
    assert a.counters["flows"] == 1
    run(a.outgoing, request("v4", "tcp"))
    assert a.counters["flows_created"] == 1


def test_table_change_drops_flows_whose_service_or_sender_left() -> None:
    a = node_a()
    run(a.outgoing, request("v4", "tcp"))
    a.set_snapshot(build_snapshot([], [X1_0], NODE_A))
    assert a.counters["flows"] == 0
    assert run(a.outgoing, request("v4", "tcp"))[0].action is Action.MISS

    a.set_snapshot(build_snapshot([X3_RR], [X1_0], NODE_A))
    run(a.outgoing, request("v4", "tcp"))
    moved = Endpoint(X1, 0, "10.18.0.2", "fc00::2", "10.30.0.12", "fdff::12", NODE_A, PORT_A)
    a.set_snapshot(build_snapshot([X3_RR], [moved], NODE_A))  # new instance IP, same nsip
    assert a.counters["flows"] == 0
    pkt = request("v4", "tcp")
    assert run(a.outgoing, pkt)[1] == readdress(pkt, "10.30.0.12", "10.18.0.66")


def test_purge_endpoint_forgets_its_flows() -> None:
    a = node_a()
    run(a.outgoing, request("v4", "tcp"))
    run(a.outgoing, request("v6", "tcp"))
    assert a.purge_endpoint("10.18.0.66") == 1 and a.counters["flows"] == 1
    assert a.purge_endpoint("fc00::102") == 1 and a.counters["flows"] == 0


# ---------------------------------------------------------------- fragments


def big(family: str, kind: str, src: str, dst: str, request: bool = True) -> Packet:
    """A datagram too large for one 1000-byte fragment."""
    body = Raw(bytes(range(256)) * 12)
    if family == "v4":
        head = IP(src=src, dst=dst, id=777)
    else:
        head = IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=0x777)
    return head / transport(family, kind, request) / body


def big_request(family: str, kind: str) -> Packet:
    client_ns, _, service, _, _ = FAMILIES[family]
    return big(family, kind, client_ns, service)


def split(family: str, pkt: Packet | bytes) -> list[bytes]:
    datagram = (IP if family == "v4" else IPv6)(bytes(pkt))
    parts = fragment(datagram, 1000) if family == "v4" else fragment6(datagram, 1000)
    return [bytes(part) for part in parts]


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_fragments_are_translated_like_their_datagram(family: str, kind: str) -> None:
    client_ns, client_instance, service, server_ns, server_instance = FAMILIES[family]
    a = node_a()
    datagram = big_request(family, kind)
    expected = split(family, readdress(datagram, client_instance, server_ns))
    fragments = split(family, datagram)
    assert len(fragments) >= 3
    for part, want in zip(fragments, expected, strict=True):
        verdict, wire = run(a.outgoing, part)
        assert verdict.address == (NODE_B, PORT_B) and wire == want

    answer = big(family, kind, server_instance, client_ns, request=False)
    expected = split(family, readdress(answer, service, client_ns))
    for part, want in zip(split(family, answer), expected, strict=True):
        verdict, delivered = run(a.incoming, part)
        assert verdict is DELIVER and delivered == want


@pytest.mark.parametrize("family", FAMILIES)
def test_later_fragment_without_its_first_is_dropped(family: str) -> None:
    a, b = node_a(), node_b()
    first, second, *_ = split(family, big_request(family, "udp"))
    assert drop_reason(run(a.outgoing, second)[0]) == "fragment_unknown"
    client_instance, server_ns = FAMILIES[family][1], FAMILIES[family][3]
    at_b = split(family, readdress(big_request(family, "udp"), client_instance, server_ns))
    assert drop_reason(run(b.incoming, at_b[1])[0]) == "fragment_unknown"
    assert run(b.incoming, at_b[0]) == (DELIVER, at_b[0])  # server side: unchanged
    assert run(b.incoming, at_b[1]) == (DELIVER, at_b[1])
    assert a.counters["drop_fragment_unknown"] == 1 and b.counters["fragments"] == 1


def test_fragment_entries_expire() -> None:
    clock = FakeClock()
    a = node_a(clock=clock, fragment_timeout=2)
    first, second, *_ = split("v4", big_request("v4", "udp"))
    run(a.outgoing, first)
    clock.now += 3
    assert drop_reason(run(a.outgoing, second)[0]) == "fragment_unknown"
    a.expire()
    assert a.counters["fragments"] == 0


# ---------------------------------------------------------------- table validation


BAD_PORT = Endpoint(X3, 4, "10.18.0.7", "", "10.30.0.4", "", NODE_B, 0)
BAD_NODE = Endpoint(X3, 4, "10.18.0.7", "", "10.30.0.4", "", "node-b", 1)
BAD_NS = Endpoint(X3, 4, "10.18.0", "", "10.30.0.4", "", NODE_B, 1)


@pytest.mark.parametrize(
    "services, local, node_ip, message",
    [
        ([ServiceEntry("10.31.0.1", "", "RR", ())], [], NODE_A, "outside 10.30.0.0/16"),
        ([ServiceEntry("", "fc00::1", "RR", ())], [], NODE_A, "outside fdff::/16"),
        ([ServiceEntry("10.30.1", "", "RR", ())], [], NODE_A, "'10.30.1' is not an IP"),
        ([ServiceEntry("fdff::1", "", "RR", ())], [], NODE_A, "not an IPv4 address"),
        ([ServiceEntry("10.30.0.1", "", "Fastest", ())], [], NODE_A, "'Fastest'"),
        ([X3_RR, X3_RR], [], NODE_A, "10.30.1.30 is listed twice"),
        (
            [ServiceEntry("10.30.0.6", "", "instance_ip", (X3_0, X3_1_ON_A))],
            [],
            NODE_A,
            "maps to 2 instances",
        ),
        (
            [ServiceEntry("10.30.0.1", "", "RR", (BAD_PORT,))],
            [],
            NODE_A,
            "X3.default.4: node_port 0",
        ),
        ([ServiceEntry("10.30.0.1", "", "RR", (BAD_NODE,))], [], NODE_A, "node_ip 'node-b' is not"),
        ([ServiceEntry("10.30.0.1", "", "RR", (BAD_NS,))], [], NODE_A, "namespace_ip '10.18.0' is"),
        ([], [BAD_NS], NODE_A, "local instance X.default.X3.default.4: namespace_ip '10.18.0'"),
        ([], [X1_0, X1_0], NODE_A, "namespace IP 10.18.0.2 is used twice"),
        ([], [], "localhost", "node IP 'localhost'"),
    ],
)
def test_build_snapshot_rejects_bad_tables(
    services: list[ServiceEntry], local: list[Endpoint], node_ip: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_snapshot(services, local, node_ip)


def test_snapshot_shape() -> None:
    snapshot = build_snapshot([X3_RR, X1_0_IP], [X1_0], NODE_A)
    assert isinstance(snapshot, Snapshot)
    assert set(snapshot.routes) == {
        bytes([10, 30, 1, 30]),
        bytes([10, 30, 0, 2]),
        bytes.fromhex("fdff2000" + "00" * 11 + "30"),
        bytes.fromhex("fdff" + "00" * 13 + "02"),
    }
    assert snapshot.instance_ips[bytes([10, 18, 0, 2])] == bytes([10, 30, 0, 2])
    with pytest.raises(TypeError):
        snapshot.routes[b"x"] = snapshot.routes[bytes([10, 30, 1, 30])]  # type: ignore[index]


# ---------------------------------------------------------------- never an exception


def _established() -> tuple[Translator, Translator]:
    a, b = node_a(), node_b()
    for family, kind in CASES:
        run(a.outgoing, request(family, kind))
    return a, b


VALID = [bytes(request(f, k)) for f, k in CASES] + [bytes(reply(f, k)) for f, k in CASES]
VALID += split("v4", big_request("v4", "udp")) + split("v6", big_request("v6", "tcp"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=120))
def test_random_bytes_never_raise(data: bytes) -> None:
    a, b = _established()
    for translator in (a, b):
        for method in (translator.outgoing, translator.incoming):
            run(method, data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 255)), max_size=6),
    st.integers(0, 1600),
)
def test_mutated_packets_never_raise(
    valid: bytes, changes: list[tuple[int, int]], cut: int
) -> None:
    a, b = _established()
    data = bytearray(valid)
    for position, value in changes:
        data[position % len(data)] = value
    for translator in (a, b):
        for method in (translator.outgoing, translator.incoming):
            run(method, bytes(data))
            run(method, bytes(data[:cut]))


def test_length_larger_than_the_buffer_is_malformed() -> None:
    a = node_a()
    buf = bytearray(bytes(request("v4", "tcp")))
    assert drop_reason(a.outgoing(buf, len(buf) + 10)) == "malformed"
    assert drop_reason(a.incoming(buf, -1)) == "malformed"


def test_length_shorter_than_the_ip_length_is_malformed() -> None:
    data = bytes(request("v4", "tcp"))
    buf = bytearray(data) + bytearray(100)
    assert drop_reason(node_a().outgoing(buf, len(data) - 1)) == "malformed"


def test_rewrite_touches_only_addresses_and_checksums() -> None:
    pkt = request("v4", "tcp")
    before = bytes(pkt)
    _, after = run(node_a().outgoing, pkt)
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    assert set(changed) <= {10, 11, *range(12, 20), 36, 37}
    assert struct.unpack("!H", after[36:38]) != struct.unpack("!H", before[36:38])
