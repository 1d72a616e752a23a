"""policies.py: which endpoint new flows get; stickiness and re-picking through a Translator."""

from __future__ import annotations

from collections import Counter
from ipaddress import ip_address

import pytest
from scapy.layers.inet import IP, UDP

from net_manager.dataplane.core import Endpoint, ServiceEntry, Translator, build_snapshot
from net_manager.dataplane.core.flows import FlowKey
from net_manager.dataplane.core.policies import (
    Closest,
    InstanceIp,
    RoundRobin,
    policy_name,
)

HERE = "131.1.0.1"
NEAR, FAR, UNMEASURED = "131.1.0.2", "131.1.0.3", "131.1.0.4"
JOB = "X.default.X3.default"
CLIENT = Endpoint("X.default.X1.default", 0, "10.18.0.2", "", "10.30.0.2", "", HERE, 50103)


def endpoint(n: int, node_ip: str) -> Endpoint:
    return Endpoint(JOB, n, f"10.18.{n}.66", "", f"10.30.0.{10 + n}", "", node_ip, 50103)


def key(sport: int, service_ip: str = "10.30.1.30") -> FlowKey:
    return (17, ip_address("10.18.0.2").packed, sport, ip_address(service_ip).packed, 53)


def test_round_robin_splits_evenly_and_rotates() -> None:
    rr, endpoints = RoundRobin(), [endpoint(0, FAR), endpoint(1, NEAR)]
    picks = [rr.pick(key(sport), endpoints) for sport in range(20)]
    assert Counter(p.instance_number for p in picks) == {0: 10, 1: 10}
    assert [p.instance_number for p in picks[:4]] == [0, 1, 0, 1]


def test_round_robin_rotates_per_service_ip() -> None:
    rr, endpoints = RoundRobin(), [endpoint(0, FAR), endpoint(1, NEAR), endpoint(2, NEAR)]
    assert rr.pick(key(1, "10.30.1.30"), endpoints).instance_number == 0
    assert rr.pick(key(2, "10.30.1.31"), endpoints).instance_number == 0
    assert rr.pick(key(3, "10.30.1.30"), endpoints).instance_number == 1
    rr.retain({ip_address("10.30.1.31").packed})  # 10.30.1.30 left the table
    assert rr.pick(key(4, "10.30.1.30"), endpoints).instance_number == 0
    assert rr.pick(key(5, "10.30.1.31"), endpoints).instance_number == 1


def test_round_robin_survives_a_shrinking_endpoint_list() -> None:
    rr = RoundRobin()
    three = [endpoint(0, FAR), endpoint(1, FAR), endpoint(2, FAR)]
    rr.pick(key(1), three)
    rr.pick(key(2), three)
    assert rr.pick(key(3), three[:1]) == three[0]


def test_round_robin_needs_an_endpoint() -> None:
    with pytest.raises(ValueError, match="0a1e011e"):
        RoundRobin().pick(key(1), [])


def test_closest_prefers_an_endpoint_on_this_node() -> None:
    rtt = {NEAR: 0.001}
    local = [endpoint(1, HERE), endpoint(2, HERE)]
    closest = Closest(HERE, rtt)
    picks = [closest.pick(key(s), [endpoint(0, NEAR), *local]) for s in range(4)]
    assert picks == [local[0], local[1], local[0], local[1]]


def test_closest_else_the_peer_with_the_lowest_rtt() -> None:
    rtt = {NEAR: 0.002, FAR: 0.040}
    closest = Closest(HERE, rtt)
    endpoints = [endpoint(0, FAR), endpoint(1, UNMEASURED), endpoint(2, NEAR)]
    assert closest.pick(key(1), endpoints).node_ip == NEAR
    rtt[FAR] = 0.001  # the loop updates RTTs in place
    assert closest.pick(key(2), endpoints).node_ip == FAR


def test_closest_rotates_over_ties_and_falls_back_to_round_robin() -> None:
    closest = Closest(HERE, {NEAR: 0.002, FAR: 0.002})
    tied = [endpoint(0, NEAR), endpoint(1, FAR), endpoint(2, UNMEASURED)]
    assert [closest.pick(key(s), tied).instance_number for s in range(4)] == [0, 1, 0, 1]
    unmeasured = Closest(HERE, {})
    picks = [unmeasured.pick(key(s), tied).instance_number for s in range(6)]
    assert picks == [0, 1, 2, 0, 1, 2]


def test_instance_ip_is_its_one_endpoint() -> None:
    only = endpoint(0, FAR)
    assert InstanceIp().pick(key(1), [only]) is only
    with pytest.raises(ValueError, match="instance IP"):
        InstanceIp().pick(key(1), [])


def test_policy_names() -> None:
    types = ["RR", "Closest", "instance_ip", "InstanceNumber"]
    assert [policy_name(t) for t in types] == ["RR", "Closest", "instance_ip", "instance_ip"]


def test_unknown_policy_name() -> None:
    with pytest.raises(ValueError, match="'rr'"):
        policy_name("rr")


# ---------------------------------------------------------------- through a Translator


def send(translator: Translator, sport: int, service_ip: str = "10.30.1.30") -> str:
    """The namespace IP a new UDP packet from the client is rewritten to."""
    buf = bytearray(bytes(IP(src="10.18.0.2", dst=service_ip) / UDP(sport=sport, dport=53)))
    verdict = translator.outgoing(buf, len(buf))
    assert verdict.action.value in ("remote", "local"), verdict
    return str(ip_address(bytes(buf[16:20])))


def translator(ip_type: str, *endpoints: Endpoint, local: tuple[Endpoint, ...] = ()) -> Translator:
    service = ServiceEntry("10.30.1.30", "", ip_type, endpoints)
    return Translator(build_snapshot([service], [CLIENT, *local], HERE))


def test_translator_round_robin_splits_twenty_flows_ten_ten() -> None:
    t = translator("RR", endpoint(0, FAR), endpoint(1, NEAR))
    assert Counter(send(t, sport) for sport in range(20)) == {"10.18.0.66": 10, "10.18.1.66": 10}


def test_translator_closest_uses_the_rtt_the_loop_measured() -> None:
    t = translator("Closest", endpoint(0, FAR), endpoint(1, NEAR))
    t.rtt.update({FAR: 0.050, NEAR: 0.005})
    assert {send(t, sport) for sport in range(5)} == {"10.18.1.66"}
    local = endpoint(2, HERE)
    t = translator("Closest", endpoint(0, FAR), local, local=(local,))
    assert {send(t, sport) for sport in range(5)} == {"10.18.2.66"}


def test_translator_closest_compares_node_ips_as_addresses() -> None:
    local = Endpoint(JOB, 3, "10.18.3.66", "", "10.30.0.13", "", "2001:DB8:0::1", 50103)
    service = ServiceEntry("10.30.1.30", "", "Closest", (endpoint(0, NEAR), local))
    client = Endpoint("X.default.X1.default", 0, "10.18.0.2", "", "10.30.0.2", "", "2001:db8::1", 1)
    t = Translator(build_snapshot([service], [client, local], "2001:db8::1"))
    t.rtt[NEAR] = 0.0001
    assert {send(t, sport) for sport in range(3)} == {"10.18.3.66"}


def test_translator_instance_ip() -> None:
    service = ServiceEntry("10.30.0.10", "", "InstanceNumber", (endpoint(0, FAR),))
    t = Translator(build_snapshot([service], [CLIENT], HERE))
    assert {send(t, sport, "10.30.0.10") for sport in range(3)} == {"10.18.0.66"}


def test_a_flow_sticks_to_its_endpoint() -> None:
    t = translator("RR", endpoint(0, FAR), endpoint(1, NEAR))
    first = send(t, 1000)
    send(t, 1001)  # another flow moves the rotation on
    assert [send(t, 1000) for _ in range(10)] == [first] * 10


def test_a_flow_is_re_picked_when_its_endpoint_leaves() -> None:
    staying, leaving = endpoint(0, FAR), endpoint(1, NEAR)
    t = translator("RR", leaving, staying)
    assert send(t, 1000) == "10.18.1.66"
    service = ServiceEntry("10.30.1.30", "", "RR", (staying,))
    t.set_snapshot(build_snapshot([service], [CLIENT], HERE))
    assert send(t, 1000) == "10.18.0.66"
    assert t.counters["flows_created"] == 2
