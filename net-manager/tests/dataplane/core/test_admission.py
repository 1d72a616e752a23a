"""translate.py: tunnel admission, the per-instance flow quota and fragments on a miss.

Byte-literal packets (built by scapy) through Translators of two nodes: A (131.1.0.1)
runs the client X1.0, B (131.1.21.5) the server X3.0 behind the RR IP 10.30.1.30.
"""

from __future__ import annotations

from typing import Any

import pytest
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.packet import Packet, Raw

from net_manager.dataplane.core import (
    DELIVER,
    Action,
    Endpoint,
    ServiceEntry,
    Translator,
    Verdict,
    build_snapshot,
)

NODE_A, NODE_B, STRANGER = "131.1.0.1", "131.1.21.5", "131.1.99.9"
PORT = 50103
X1, X2, X3 = (f"X.default.X{i}.default" for i in (1, 2, 3))
X1_0 = Endpoint(X1, 0, "10.18.0.2", "fc00::2", "10.30.0.2", "fdff::2", NODE_A, PORT)
X2_0 = Endpoint(X2, 0, "10.18.0.3", "fc00::3", "10.30.0.3", "fdff::3", NODE_A, PORT)
X3_0 = Endpoint(X3, 0, "10.18.0.66", "fc00::102", "10.30.0.6", "fdff::6", NODE_B, PORT)
X3_RR = ServiceEntry("10.30.1.30", "fdff:2000::30", "RR", (X3_0,))
X1_0_IP = ServiceEntry("10.30.0.2", "fdff::2", "instance_ip", (X1_0,))
X3_0_IP = ServiceEntry("10.30.0.6", "fdff::6", "instance_ip", (X3_0,))

# (client instance IP, server namespace IP, RR IP, client namespace IP) per family
FAMILIES = {
    "v4": ("10.30.0.2", "10.18.0.66", "10.30.1.30", "10.18.0.2"),
    "v6": ("fdff::2", "fc00::102", "fdff:2000::30", "fc00::2"),
}


def node_a(**kwargs: Any) -> Translator:
    return Translator(build_snapshot([X3_RR, X3_0_IP], [X1_0, X2_0], NODE_A), **kwargs)


def node_b(*services: ServiceEntry, **kwargs: Any) -> Translator:
    return Translator(build_snapshot(list(services), [X3_0], NODE_B), **kwargs)


def packet(
    src: str, dst: str, sport: int = 34278, payload: bytes = b"hello", dport: int = 7777
) -> bytes:
    head = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return bytes(head / UDP(sport=sport, dport=dport) / payload)


def run(method: Any, data: bytes, *args: Any) -> tuple[Verdict, bytes]:
    buf = bytearray(data) + bytearray(64)
    verdict = method(buf, len(data), *args)
    return verdict, bytes(buf[: len(data)])


def split(data: bytes, size: int = 1000) -> list[bytes]:
    if data[0] >> 4 == 4:
        return [bytes(p) for p in fragment(IP(data), size)]
    datagram = IPv6(data)
    head = IPv6(src=datagram.src, dst=datagram.dst) / IPv6ExtHdrFragment(id=0x777)
    return [bytes(p) for p in fragment6(head / datagram.payload, size)]


# ---------------------------------------------------------------- tunnel admission


@pytest.mark.parametrize("family", FAMILIES)
def test_a_member_node_sending_from_its_instance_ip_is_admitted(family: str) -> None:
    client_instance, server_ns, _, _ = FAMILIES[family]
    b = node_b(X1_0_IP)
    request = packet(client_instance, server_ns)
    assert run(b.from_tunnel, request, NODE_A) == (DELIVER, request)
    mapped = "::ffff:" + NODE_A  # what a dual-stack socket reports
    assert run(b.from_tunnel, request, mapped)[0] is DELIVER


@pytest.mark.parametrize("family", FAMILIES)
def test_an_unknown_source_in_the_service_range_is_resolved_first(family: str) -> None:
    """B serves X3 but never queried anything: the caller's instance IP is a miss on it."""
    client_instance, server_ns, _, _ = FAMILIES[family]
    b = node_b()
    request = packet(client_instance, server_ns)
    verdict, untouched = run(b.from_tunnel, request, NODE_A)
    assert verdict.action is Action.MISS and untouched == request
    assert verdict.service_ip == client_instance and verdict.owner == NODE_A
    b.set_snapshot(build_snapshot([X1_0_IP], [X3_0], NODE_B))  # the answer arrived
    assert run(b.from_tunnel, request, NODE_A)[0] is DELIVER
    assert b.counters["admission_misses"] == 1 and b.counters["packets_in"] == 1
    assert b.used_jobs == {X1}  # the caller's job is kept while it calls


@pytest.mark.parametrize("family", FAMILIES)
def test_a_known_instance_ip_from_another_node_is_spoofed(family: str) -> None:
    client_instance, server_ns, _, _ = FAMILIES[family]
    b = node_b(X1_0_IP, X3_0_IP)  # a node always knows its own instances' instance IPs
    x3_instance = "10.30.0.6" if family == "v4" else "fdff::6"
    # A is a member, but X3.0's instance IP lives on B, not on A.
    verdict, _ = run(b.from_tunnel, packet(x3_instance, server_ns), NODE_A)
    assert verdict.reason == "spoofed_source"
    # From a host that is no node: X1.0's instance IP is known to live on A.
    verdict, _ = run(b.from_tunnel, packet(client_instance, server_ns), STRANGER)
    assert verdict.reason == "not_member"
    assert b.counters["drop_spoofed_source"] == 1 and b.counters["drop_not_member"] == 1
    assert b.counters["packets_in"] == 0


@pytest.mark.parametrize(
    "src, sender, reason",
    [
        ("10.18.0.7", NODE_A, "spoofed_source"),  # a namespace IP: never a tunnel source
        ("192.0.2.1", NODE_A, "spoofed_source"),
        ("10.30.1.30", NODE_A, "spoofed_source"),  # the RR IP itself
        ("192.0.2.1", STRANGER, "not_member"),
        ("fc00::7", NODE_A, "spoofed_source"),
    ],
)
def test_sources_outside_the_instance_ips_are_dropped(src: str, sender: str, reason: str) -> None:
    b = node_b(X1_0_IP, X3_RR)
    dst = "fc00::102" if ":" in src else "10.18.0.66"
    verdict, _ = run(b.from_tunnel, packet(src, dst), sender)
    assert verdict.action is Action.DROP and verdict.reason == reason
    assert b.counters[f"drop_{reason}"] == 1


def test_not_for_a_local_namespace_ip_is_dropped_before_admission() -> None:
    b = node_b(X1_0_IP)
    verdict, _ = run(b.from_tunnel, packet("10.30.0.2", "10.18.0.99"), NODE_A)
    assert verdict.reason == "not_for_us"


def test_replies_from_the_server_node_are_admitted_and_translated_back() -> None:
    a = node_a()
    assert run(a.outgoing, packet("10.18.0.2", "10.30.1.30"))[0].address == (NODE_B, PORT)
    reply = packet("10.30.0.6", "10.18.0.2", sport=7777, dport=34278)
    verdict, delivered = run(a.from_tunnel, reply, NODE_B)
    assert verdict is DELIVER and IP(delivered).src == "10.30.1.30"
    assert run(a.from_tunnel, reply, STRANGER)[0].reason == "not_member"


# ---------------------------------------------------------------- flow quota


def test_one_instance_at_its_quota_leaves_room_for_the_others() -> None:
    a = node_a(max_flows=100, flow_quota=10)
    for sport in range(1000, 1050):
        run(a.outgoing, packet("10.18.0.2", "10.30.1.30", sport))
    assert a.counters["flows"] == 10 and a.counters["drop_flow_quota"] == 40
    # X2.0 (another container) still opens flows; X1.0's existing flows still work.
    assert run(a.outgoing, packet("10.18.0.3", "10.30.1.30", 2000))[0].action is Action.REMOTE
    assert run(a.outgoing, packet("10.18.0.2", "10.30.1.30", 1000))[0].action is Action.REMOTE
    assert run(a.outgoing, packet("fc00::3", "fdff:2000::30", 2000))[0].action is Action.REMOTE


def test_the_quota_counts_both_families_of_one_instance_and_frees_on_expiry() -> None:
    clock = [0.0]
    a = node_a(max_flows=100, flow_quota=2, idle_timeout=10, clock=lambda: clock[0])
    assert run(a.outgoing, packet("10.18.0.2", "10.30.1.30", 1))[0].action is Action.REMOTE
    assert run(a.outgoing, packet("fc00::2", "fdff:2000::30", 1))[0].action is Action.REMOTE
    assert run(a.outgoing, packet("10.18.0.2", "10.30.1.30", 2))[0].reason == "flow_quota"
    clock[0] = 11
    a.expire()
    assert run(a.outgoing, packet("10.18.0.2", "10.30.1.30", 2))[0].action is Action.REMOTE


def test_default_quota_is_a_quarter_of_the_table() -> None:
    assert node_a(max_flows=1000).flow_quota == 250
    with pytest.raises(ValueError, match="flow_quota"):
        node_a(flow_quota=0)


def test_a_miss_names_the_instance_that_caused_it() -> None:
    verdict, _ = run(node_a().outgoing, packet("fc00::3", "fdff:2000::99"))
    assert verdict.action is Action.MISS and verdict.owner == f"{X2}.0"


# ---------------------------------------------------------------- fragments on a miss


@pytest.mark.parametrize("family", FAMILIES)
def test_later_fragments_of_an_unresolved_service_ip_are_misses_too(family: str) -> None:
    _, _, _, client_ns = FAMILIES[family]
    unknown = "10.30.1.99" if family == "v4" else "fdff:2000::99"
    a = node_a()
    parts = split(packet(client_ns, unknown, payload=bytes(4000)))
    assert len(parts) >= 4
    verdicts = [run(a.outgoing, part)[0] for part in parts]
    assert all(v.action is Action.MISS and v.service_ip == unknown for v in verdicts)
    assert a.counters["drop_fragment_unknown"] == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_fragments_from_an_unresolved_caller_are_misses_then_delivered_whole(
    family: str,
) -> None:
    client_instance, server_ns, _, _ = FAMILIES[family]
    b = node_b()
    parts = split(packet(client_instance, server_ns, payload=bytes(4000)))
    verdicts = [run(b.from_tunnel, part, NODE_A)[0] for part in parts]
    assert all(v.action is Action.MISS and v.service_ip == client_instance for v in verdicts)
    b.set_snapshot(build_snapshot([X1_0_IP], [X3_0], NODE_B))
    assert [run(b.from_tunnel, part, NODE_A) for part in parts] == [
        (DELIVER, part) for part in parts
    ]


def test_a_later_fragment_to_a_resolved_service_without_its_first_is_still_dropped() -> None:
    a = node_a()
    parts = split(packet("10.18.0.2", "10.30.1.30", payload=bytes(3000)))
    assert run(a.outgoing, parts[1])[0].reason == "fragment_unknown"


def test_raw_bytes_of_a_first_fragment_parse_as_udp() -> None:
    """The helper builds real fragments: the first carries the UDP header."""
    parts = split(packet("10.18.0.2", "10.30.1.99", payload=bytes(3000)))
    assert UDP in IP(parts[0]) and Raw in IP(parts[1])
    assert isinstance(IP(parts[0]), Packet)
