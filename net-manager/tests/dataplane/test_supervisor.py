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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from ipaddress import ip_address

import pytest

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


def start_node(bind: str, **kwargs) -> Node:
    """A fixed port, as on a real node: a restarted process is found where it was."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    node: Node

    def on_resolve(service_ip: str, reply: Callable[[bool], None]) -> None:
        node.resolves.append((service_ip, reply))

    supervisor = DataPlaneSupervisor(
        None,
        "10.19.1.254/12",
        "fcef::dead:beef/7",
        1450,
        free_udp_port(bind),
        on_resolve=on_resolve,
        on_used=lambda jobs: node.used.extend(jobs),
        extra_args=["--bind", bind, "--tun-fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        backoff_min=0.1,
        **kwargs,
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
        supervisor = DataPlaneSupervisor(
            None,
            "10.19.1.254/12",
            "",
            1450,
            taken.getsockname()[1],  # the port is in use: the process exits with 2
            on_resolve=lambda ip, reply: None,
            on_used=lambda jobs: None,
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
