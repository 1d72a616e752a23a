"""supervisor.py with the real data-plane process, no root: two "nodes" on loopback.

Each process gets one end of a SOCK_DGRAM socketpair as its TUN (--tun-fd); the test
holds the other end, so it writes what a container would send and reads what the
process delivers. Node A is 127.0.0.1, node B 127.0.0.2 (tunnel ports picked by the
kernel); nothing leaves the loopback range.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import ip_address

import pytest

from net_manager.dataplane.backend import DataPlaneOptions
from net_manager.dataplane.core.microbench import build_packet
from net_manager.dataplane.core.packet import UDP
from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.supervisor import DataPlaneSupervisor
from testsupport import wait_until

pytestmark = pytest.mark.process  # real broker / server / subprocess

X1, X3 = "X.default.X1.default", "X.default.X3.default"
NODE_A, NODE_B = "127.0.0.1", "127.0.0.2"
CLIENT_NS, CLIENT_INSTANCE = "10.16.0.2", "10.30.0.2"
SERVER_NS, SERVER_INSTANCE = "10.16.0.66", "10.30.0.6"
RR_IP = "10.30.1.30"


@dataclass
class Node:
    """A supervised data plane and the test's end of its stand-in TUN."""

    supervisor: DataPlaneSupervisor
    tun: socket.socket
    resolves: list[tuple[str, Callable[[bool], None]]] = field(default_factory=list)
    used: list[str] = field(default_factory=list)

    def send(self, packet: bytes) -> None:
        self.tun.send(packet)

    def receive(self, timeout: float = 5.0) -> bytes:
        self.tun.settimeout(timeout)
        return self.tun.recv(70000)

    def counter(self, name: str) -> int:
        return self.supervisor.counters().get(name, 0)


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_node(bind: str, extra: Sequence[str] = (), tunnel_key: str = "") -> Node:
    """A fixed port, as on a real node: a restarted process is found where it was."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    node: Node

    def on_resolve(service_ip: str, reply: Callable[[bool], None]) -> None:
        node.resolves.append((service_ip, reply))

    options = DataPlaneOptions(
        tun_name=None,
        tun_v4_cidr="10.19.1.254/12",
        tun_v6_cidr="fcef::dead:beef/7",
        mtu=1450,
        port=free_udp_port(bind),
        on_resolve=on_resolve,
        on_used=lambda jobs: node.used.extend(jobs),
        tunnel_key=tunnel_key,
    )
    supervisor = DataPlaneSupervisor(
        options,
        extra_args=["--bind", bind, "--tun-fd", str(theirs.fileno()), *extra],
        pass_fds=[theirs.fileno()],
        backoff_min=0.1,
    )
    node = Node(supervisor, ours)
    node.theirs = theirs  # type: ignore[attr-defined]  # kept open for restarts
    supervisor.start()
    assert supervisor.wait_ready(10), "data plane process did not say Ready"
    return node


def stop_node(node: Node) -> None:
    node.supervisor.stop()
    node.tun.close()
    node.theirs.close()  # type: ignore[attr-defined]


@pytest.fixture
def nodes() -> Iterator[tuple[Node, Node]]:
    started: list[Node] = []
    try:
        started.append(start_node(NODE_A))
        started.append(start_node(NODE_B))
        yield started[0], started[1]
    finally:
        for node in started:
            stop_node(node)


def endpoints(a: Node, b: Node) -> tuple[Endpoint, Endpoint]:
    client = Endpoint(X1, 0, CLIENT_NS, "", CLIENT_INSTANCE, "", NODE_A, a.supervisor.port)
    server = Endpoint(X3, 0, SERVER_NS, "", SERVER_INSTANCE, "", NODE_B, b.supervisor.port)
    return client, server


def instance_entry(endpoint: Endpoint) -> ServiceEntry:
    return ServiceEntry(endpoint.instance_ip, "", "instance_ip", (endpoint,))


def push_tables(a: Node, b: Node, *, with_rr: bool = True) -> None:
    client, server = endpoints(a, b)
    rr = [ServiceEntry(RR_IP, "", "RR", (server,))] if with_rr else []
    a.supervisor.push_snapshot([*rr, instance_entry(server)], [client], NODE_A)
    b.supervisor.push_snapshot([instance_entry(client), instance_entry(server)], [server], NODE_B)


def addresses(packet: bytes) -> tuple[str, str]:
    return str(ip_address(packet[12:16])), str(ip_address(packet[16:20]))


def wait_applied(node: Node, snapshots: int = 1) -> None:
    wait_until(lambda: node.counter("snapshots") >= snapshots, 5, message="snapshot applied")


def request(sport: int = 40000) -> bytes:
    return build_packet(CLIENT_NS, RR_IP, UDP, sport, 7777, size=32)


def round_trip(a: Node, b: Node, sport: int = 40000) -> None:
    """A request from the client on A to the RR IP, answered by the server on B."""
    a.send(request(sport))
    at_server = b.receive()
    assert addresses(at_server) == (CLIENT_INSTANCE, SERVER_NS)
    b.send(build_packet(SERVER_NS, CLIENT_INSTANCE, UDP, 7777, sport, size=32))
    at_client = a.receive()
    assert addresses(at_client) == (RR_IP, CLIENT_NS)


def test_snapshot_delivery_and_traffic_both_ways(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    push_tables(a, b)
    wait_applied(a)
    wait_applied(b)
    round_trip(a, b)
    wait_until(lambda: a.counter("tunnel_packets_sent") >= 1 and a.counter("flows") == 1, 5)
    assert a.counter("packets_out") == 1 and a.counter("packets_in") == 1
    wait_until(lambda: X3 in a.used and X1 in b.used, 5, message="used jobs reported")


def test_a_miss_is_resolved_through_on_resolve(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    push_tables(a, b, with_rr=False)
    wait_applied(a)
    wait_applied(b)
    a.send(request())
    a.send(request(40001))
    (service_ip, reply), *more = wait_until(lambda: a.resolves, 5, message="resolve request")
    assert service_ip == RR_IP and not more  # one request per service IP
    push_tables(a, b)
    reply(True)
    got = {addresses(b.receive()) for _ in range(2)}
    assert got == {(CLIENT_INSTANCE, SERVER_NS)}


def test_a_miss_answered_not_found_drops_the_packets(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    push_tables(a, b, with_rr=False)
    wait_applied(a)
    a.send(request())
    (_, reply), *_ = wait_until(lambda: a.resolves, 5, message="resolve request")
    reply(False)
    wait_until(lambda: a.counter("drop_unresolved") == 1, 5, message="drop counted")
    assert a.counter("queued_packets") == 0


def test_a_killed_process_is_restarted_with_the_latest_snapshot(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    push_tables(a, b)
    wait_applied(a)
    wait_applied(b)
    round_trip(a, b)
    wait_until(lambda: a.counter("packets_out") == 1, 5)
    old_pid = a.supervisor.pid
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: a.supervisor.restarts == 1 and a.supervisor.running, 10)
    assert a.supervisor.pid != old_pid
    wait_applied(a, snapshots=2)  # one per process, summed over the restart
    round_trip(a, b, sport=40002)  # the new process has the table again
    wait_until(lambda: a.counter("packets_out") == 2, 5, message="counters summed")


def test_garbage_on_the_tunnel_port_is_counted_not_fatal(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    push_tables(a, b)
    wait_applied(b)
    client, server = endpoints(a, b)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        # random bytes behind a first nibble that is neither 4 nor 6: a control datagram
        # (with a random first byte, 1 in 8 runs would look like an IP packet instead)
        for payload in (b"", b"\x45" * 30, b"\x60\x00", b"\x1f" + os.urandom(199), b"\xa5" * 16):
            attacker.sendto(payload, (NODE_B, server.node_port))
        stray = build_packet(CLIENT_INSTANCE, "10.16.0.99", UDP, 1, 2)  # not a local IP
        attacker.sendto(stray, (NODE_B, server.node_port))
    wait_until(lambda: b.counter("drop_not_for_us") == 1, 5, message="stray packet counted")
    assert b.counter("drop_malformed") == 2 and b.counter("control_datagrams") >= 2
    assert b.counter("tun_packets_written") == 0 and b.supervisor.restarts == 0
    round_trip(a, b)  # still working


def test_stop_leaves_no_process() -> None:
    node = start_node(NODE_A)
    pid = node.supervisor.pid
    stop_node(node)
    assert not node.supervisor.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_process_that_cannot_start_is_retried_with_backoff() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((NODE_A, 0))
        options = DataPlaneOptions(
            tun_name=None,
            tun_v4_cidr="10.19.1.254/12",
            tun_v6_cidr="",
            mtu=1450,
            port=taken.getsockname()[1],  # the port is in use: the process exits with 2
            on_resolve=lambda ip, reply: None,
            on_used=lambda jobs: None,
        )
        supervisor = DataPlaneSupervisor(
            options,
            extra_args=["--bind", NODE_A],
            backoff_min=0.05,
        )
        supervisor.start()
        try:
            wait_until(lambda: supervisor.restarts >= 2, 10, message="restarts")
            assert not supervisor.running
        finally:
            supervisor.stop()


def test_reply_after_a_restart_is_harmless(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    push_tables(a, b, with_rr=False)
    wait_applied(a)
    a.send(request())
    (_, reply), *_ = wait_until(lambda: a.resolves, 5)
    os.kill(a.supervisor.pid, signal.SIGKILL)
    wait_until(lambda: a.supervisor.restarts == 1 and a.supervisor.running, 10)
    done = threading.Event()
    threading.Thread(target=lambda: (reply(True), done.set())).start()
    assert done.wait(5)
    client, server = endpoints(a, b)
    moved = replace(client, instance_number=1)
    a.supervisor.push_snapshot([instance_entry(server)], [moved], NODE_A)
    wait_applied(a, snapshots=3)


# ---------------------------------------------------------------- tunnel admission

STRANGER = "127.0.0.3"  # a host on the underlay that is no node


def send_from(source: str, packet: bytes, port: int, to: str = NODE_B) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.sendto(packet, (to, port))


def test_spoofed_and_non_member_tunnel_packets_are_dropped_and_counted(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    push_tables(a, b)
    wait_applied(b)
    port = b.supervisor.port
    # From node A, but with the server's own instance IP (it lives on B) as source.
    send_from(NODE_A, build_packet(SERVER_INSTANCE, SERVER_NS, UDP, 1, 7777), port)
    # From a host that is no node: a real caller's instance IP, or any other source.
    send_from(STRANGER, build_packet(CLIENT_INSTANCE, SERVER_NS, UDP, 1, 7777), port)
    send_from(STRANGER, build_packet("192.0.2.1", SERVER_NS, UDP, 1, 7777), port)
    send_from(STRANGER, build_packet("10.16.0.7", SERVER_NS, UDP, 1, 7777), port)
    wait_until(
        lambda: b.counter("drop_spoofed_source") == 1 and b.counter("drop_not_member") == 3,
        5,
        message="drops counted by reason",
    )
    assert b.counter("tun_packets_written") == 0 and not b.resolves
    round_trip(a, b)  # the member path still works


def test_a_node_that_never_queried_resolves_the_caller_then_delivers(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    client, server = endpoints(a, b)
    a.supervisor.push_snapshot(
        [ServiceEntry(RR_IP, "", "RR", (server,)), instance_entry(server)], [client], NODE_A
    )
    b.supervisor.push_snapshot([instance_entry(server)], [server], NODE_B)  # knows no caller
    wait_applied(a)
    wait_applied(b)
    a.send(request())
    (address, reply), *more = wait_until(lambda: b.resolves, 5, message="caller resolved")
    assert address == CLIENT_INSTANCE and not more
    assert b.counter("tun_packets_written") == 0  # waits for the answer
    push_tables(a, b)  # the answer: X1's instance IP lives on A
    reply(True)
    assert addresses(b.receive()) == (CLIENT_INSTANCE, SERVER_NS)
    b.send(build_packet(SERVER_NS, CLIENT_INSTANCE, UDP, 7777, 40000, size=32))
    assert addresses(a.receive()) == (RR_IP, CLIENT_NS)  # the reply needed no second query
    assert len(b.resolves) == 1


def test_an_unknown_caller_is_dropped_after_a_negative_answer(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    push_tables(a, b)
    client, server = endpoints(a, b)
    b.supervisor.push_snapshot([instance_entry(server)], [server], NODE_B)
    wait_applied(b, snapshots=2)
    send_from(STRANGER, build_packet("10.30.9.9", SERVER_NS, UDP, 1, 7777), b.supervisor.port)
    (address, reply), *_ = wait_until(lambda: b.resolves, 5, message="resolve")
    assert address == "10.30.9.9"
    reply(False)
    wait_until(lambda: b.counter("drop_admission_unresolved") == 1, 5, message="drop counted")
    send_from(STRANGER, build_packet("10.30.9.9", SERVER_NS, UDP, 2, 7777), b.supervisor.port)
    wait_until(lambda: b.counter("drop_admission_unresolved") == 2, 5, message="cached answer")
    assert len(b.resolves) == 1 and b.counter("tun_packets_written") == 0


def fragments(packet: bytes, size: int = 1000) -> list[bytes]:
    from scapy.layers.inet import IP, fragment

    return [bytes(part) for part in fragment(IP(packet), size)]


def test_a_fragmented_datagram_on_a_miss_arrives_whole_at_the_server(
    nodes: tuple[Node, Node],
) -> None:
    """Both ends miss: A has not resolved the RR IP, B has not resolved the caller."""
    a, b = nodes
    client, server = endpoints(a, b)
    a.supervisor.push_snapshot([instance_entry(server)], [client], NODE_A)
    b.supervisor.push_snapshot([instance_entry(server)], [server], NODE_B)
    wait_applied(a)
    wait_applied(b)
    parts = fragments(build_packet(CLIENT_NS, RR_IP, UDP, 40000, 7777, size=4000))
    assert len(parts) == 5
    for part in parts:
        a.send(part)
    (_, reply_a), *_ = wait_until(lambda: a.resolves, 5, message="RR IP resolved")
    rr = ServiceEntry(RR_IP, "", "RR", (server,))
    a.supervisor.push_snapshot([rr, instance_entry(server)], [client], NODE_A)
    reply_a(True)
    (_, reply_b), *_ = wait_until(lambda: b.resolves, 5, message="caller resolved")
    push_tables(a, b)
    reply_b(True)
    received = [b.receive() for _ in parts]
    assert {addresses(part) for part in received} == {(CLIENT_INSTANCE, SERVER_NS)}
    assert sorted(len(part) for part in received) == sorted(len(part) for part in parts)
    assert a.counter("drop_fragment_unknown") == 0 == b.counter("drop_fragment_unknown")


def test_a_flood_of_unknown_service_ips_makes_a_handful_of_queries(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    push_tables(a, b)
    wait_applied(a)
    for i in range(3000):
        a.send(build_packet(CLIENT_NS, f"10.30.{100 + i // 200}.{i % 200 + 1}", UDP, 1, 2))
    wait_until(lambda: a.counter("tun_packets_read") >= 3000, 10, message="flood read")
    assert len(a.resolves) <= 15
    assert a.counter("drop_miss_rate_limited") >= 3000 - 15
    round_trip(a, b)  # resolved services are not held up


def test_one_container_flooding_new_flows_leaves_another_one_working() -> None:
    started: list[Node] = []
    try:
        extra = ["--max-flows", "1000", "--flow-quota", "0.25"]
        a, b = start_node(NODE_A, extra), start_node(NODE_B)
        started += [a, b]
        client, server = endpoints(a, b)
        other = Endpoint(X1, 1, "10.16.0.3", "", "10.30.0.3", "", NODE_A, a.supervisor.port)
        rr = ServiceEntry(RR_IP, "", "RR", (server,))
        a.supervisor.push_snapshot([rr, instance_entry(server)], [client, other], NODE_A)
        b.supervisor.push_snapshot(
            [instance_entry(client), instance_entry(other), instance_entry(server)],
            [server],
            NODE_B,
        )
        wait_applied(a)
        wait_applied(b)
        for sport in range(20000, 21200):  # more new flows than the whole table holds
            a.send(request(sport))
        wait_until(lambda: a.counter("tun_packets_read") >= 1200, 10, message="flood read")
        assert a.counter("flows") == 250 and a.counter("drop_flow_quota") == 950
        a.send(build_packet("10.16.0.3", RR_IP, UDP, 50000, 7777, size=32))
        seen = set()
        while ("10.30.0.3", SERVER_NS) not in seen:  # behind the flood's 250 packets
            seen.add(addresses(b.receive()))
        wait_until(lambda: a.counter("flows") == 251, 5, message="the other one's flow")
    finally:
        for node in started:
            stop_node(node)


# ---------------------------------------------------------------- sealed tunnel

KEY = "5a" * 32


def test_a_sealed_tunnel_carries_traffic_and_refuses_what_is_not_sealed() -> None:
    started: list[Node] = []
    try:
        a, b = start_node(NODE_A, tunnel_key=KEY), start_node(NODE_B, tunnel_key=KEY)
        started += [a, b]
        with open(f"/proc/{b.supervisor.pid}/cmdline", "rb") as cmdline:
            assert KEY.encode() not in cmdline.read()  # the key is not on the command line
        push_tables(a, b)
        wait_applied(a)
        wait_applied(b)
        round_trip(a, b)
        wait_until(
            lambda: rtt_measured(a) and rtt_measured(b), 10, message="probes sealed both ways"
        )
        # A member's address and instance IP, but not sealed: refused.
        plain = build_packet(CLIENT_INSTANCE, SERVER_NS, UDP, 1, 7777)
        send_from(NODE_A, plain, b.supervisor.port)
        wait_until(lambda: b.counter("drop_not_sealed") == 1, 5, message="plain refused")
        assert b.counter("packets_in") == 1  # only the round trip's request
    finally:
        for node in started:
            stop_node(node)


def rtt_measured(node: Node) -> bool:
    """The node measured its peer's RTT: sealed probes went out and sealed echoes came back."""
    return bool(node.supervisor.rtt)


def test_a_node_with_another_key_is_not_heard() -> None:
    started: list[Node] = []
    try:
        a, b = start_node(NODE_A, tunnel_key="11" * 32), start_node(NODE_B, tunnel_key=KEY)
        started += [a, b]
        push_tables(a, b)
        wait_applied(a)
        wait_applied(b)
        a.send(request())
        wait_until(lambda: b.counter("drop_not_sealed") >= 1, 5, message="foreign seal refused")
        assert b.counter("packets_in") == 0
    finally:
        for node in started:
            stop_node(node)
