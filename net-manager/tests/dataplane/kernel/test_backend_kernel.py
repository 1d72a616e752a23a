"""The kernel backend in a node namespace of our own: nftables NAT between containers.

A node namespace with the bridge `oak-br0` (forwarding on, no TUN: whatever the kernel
rules do not catch goes nowhere), three container namespaces on it (their ports
attached by the node's own `ensure_veth`), and a
KernelBackend wrapping a stand-in for the TUN proxy. What a user would see: new
connections to an RR service IP spread over its instances, the server sees the
caller's instance IP, the caller gets its replies from the service IP, instance IPs
map 1:1, IPv6 works the same, an instance reaches itself through its own instance IP
and through RR service IPs that pick it (hairpin), traffic is reported as use, and
stopping removes our table and nothing else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.kernel.backend import KernelBackend
from net_manager.dataplane.kernel.nft import Conntrack, Nft
from net_manager.dataplane.kernel.ruleset import TABLE
from net_manager.node.kernel import Kernel
from testsupport import nstools, wait_until

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (apt install nftables)"),
]

NODE_IP = "198.18.0.1"
PORT = 7000
A = Endpoint("X.d.client.d", 0, "10.16.0.2", "fc00::2", "10.30.0.2", "fdff::2", NODE_IP, 50103)
B = Endpoint("X.d.server.d", 0, "10.16.0.3", "fc00::3", "10.30.0.3", "fdff::3", NODE_IP, 50103)
C = Endpoint("X.d.server.d", 1, "10.16.0.4", "fc00::4", "10.30.0.4", "fdff::4", NODE_IP, 50103)
RR = ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (B, C))
CLOSEST = ServiceEntry("10.30.1.31", "fdff:1000::1f", "Closest", (B,))


def instance_ips(*endpoints: Endpoint) -> list[ServiceEntry]:
    return [ServiceEntry(e.instance_ip, e.instance_ip_v6, "instance_ip", (e,)) for e in endpoints]


NO_DAD = ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
TABLE_ENTRIES = [RR, CLOSEST, *instance_ips(A, B, C)]

UDP_CLIENT = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3)
sock.sendto(b"hi", (host, port))
data, peer = sock.recvfrom(100)
print(data.decode(), peer[0])
"""

UDP_SERVER = r"""
import socket, sys
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
sock.bind(("::", int(sys.argv[1])))
print("listening", flush=True)
while True:
    data, peer = sock.recvfrom(100)
    sock.sendto(f"{sys.argv[2]} {peer[0].removeprefix('::ffff:')}".encode(), peer)
"""


STICKY_UDP = r"""
import socket, sys
host, port, wanted = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for _ in range(20):  # a flow (one socket) that landed on `wanted`
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.sendto(b"x", (host, port))
    if sock.recv(100).split()[0].decode() == wanted:
        break
print("landed", flush=True)
sys.stdin.readline()
sock.sendto(b"again", (host, port))
print(sock.recv(100).split()[0].decode(), flush=True)
"""


class StandIn:
    """The TUN proxy's place in the wrapper: records what it is given."""

    def __init__(self) -> None:
        self.rtt: dict[str, float] = {}
        self.snapshots: list[tuple] = []
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def push_snapshot(self, services, local_instances, node_ip) -> None:
        self.snapshots.append((services, local_instances, node_ip))

    def counters(self) -> dict[str, int | float]:
        return {"tun_packets_read": 0}


@pytest.fixture
def node():
    """(node namespace, {endpoint: container namespace}) with echo servers on B and C."""
    with nstools.namespaces() as ns:
        node_ns = ns.netns()
        run = lambda *argv: nstools.run_in(node_ns, list(argv))  # noqa: E731
        run("sysctl", "-qw", *NO_DAD)  # a tentative address would drop the first packets
        run("ip", "link", "add", "oak-br0", "type", "bridge")
        run("ip", "addr", "add", "10.16.0.1/26", "dev", "oak-br0")
        run("ip", "addr", "add", "fc00::1/120", "dev", "oak-br0", "nodad")
        run("ip", "link", "set", "oak-br0", "up")
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        containers = {}
        for index, endpoint in enumerate((A, B, C)):
            container = ns.netns()
            nstools.run_in(container, ["sysctl", "-qw", *NO_DAD])
            host_side = f"oak-h{index}"
            nstools.veth_between(
                node_ns,
                host_side,
                container,
                "eth0",
                addresses_b=[f"{endpoint.namespace_ip}/26", f"{endpoint.namespace_ip_v6}/120"],
            )
            with Kernel(node_ns) as node_kernel:  # attached to the bridge as the node does
                node_kernel.ensure_veth(host_side, f"oak-c{index}", "oak-br0", 1500)
            nstools.run_in(container, ["ip", "route", "add", "default", "via", "10.16.0.1"])
            nstools.run_in(container, ["ip", "-6", "route", "add", "default", "via", "fc00::1"])
            containers[endpoint] = container
        for endpoint, tag in ((B, "b"), (C, "c")):
            ns.track(nstools.tcp_echo_server(containers[endpoint], "::", PORT, tag))
            udp = nstools.popen_in(
                containers[endpoint],
                [sys.executable, "-c", UDP_SERVER, str(PORT), tag],
                stdout=subprocess.PIPE,
                text=True,
            )
            ns.track(udp)
            assert udp.stdout is not None and udp.stdout.readline().strip() == "listening"
        yield node_ns, containers


@pytest.fixture
def backend(node):
    node_ns, _ = node
    used: list[list[str]] = []
    kernel = KernelBackend(
        StandIn(),
        Nft(["ip", "netns", "exec", node_ns]),
        bridge="oak-br0",
        on_used=used.append,
        poll_interval=0.2,
        conntrack=Conntrack(["ip", "netns", "exec", node_ns]),
    )
    kernel.used = used  # type: ignore[attr-defined]
    kernel.start()
    yield kernel
    kernel.stop()


def ask(container: str, host: str) -> tuple[str, str]:
    """(server tag, the caller address the server saw) over a new TCP connection."""
    tag, peer = nstools.tcp_request(container, host, PORT).split()
    return tag, peer


def udp_ask(container: str, host: str) -> list[str]:
    """[server tag, caller address the server saw, address the answer came from]."""
    argv = [sys.executable, "-c", UDP_CLIENT, host, str(PORT)]
    return nstools.run_in(container, argv).stdout.split()


def tables(node_ns: str) -> str:
    return nstools.run_in(node_ns, ["nft", "list", "tables"]).stdout


def test_rr_spreads_new_connections_and_rewrites_the_source(node, backend):
    node_ns, containers = node
    backend.push_snapshot(TABLE_ENTRIES, [A, B, C], NODE_IP)
    answers = [ask(containers[A], RR.service_ip) for _ in range(4)]
    assert sorted(tag for tag, _ in answers) == ["b", "b", "c", "c"]
    assert [tag for tag, _ in answers][:2] in (["b", "c"], ["c", "b"])  # rotation, not chance
    assert {peer for _, peer in answers} == {A.instance_ip}  # the server sees the instance IP
    assert backend.counters()["kernel_services"] == 2 * len(TABLE_ENTRIES)
    wait_until(lambda: backend.counters()["kernel_flows_created"] >= 4, timeout=5)


def test_udp_replies_come_from_the_service_ip(node, backend):
    _, containers = node
    backend.push_snapshot(TABLE_ENTRIES, [A, B, C], NODE_IP)
    tag, seen, source = udp_ask(containers[A], CLOSEST.service_ip)
    assert (tag, seen, source) == ("b", A.instance_ip, CLOSEST.service_ip)
    tag, seen, source = udp_ask(containers[A], CLOSEST.service_ip_v6)
    assert (tag, seen, source) == ("b", A.instance_ip_v6, CLOSEST.service_ip_v6)


def test_instance_ips_map_one_to_one(node, backend):
    _, containers = node
    backend.push_snapshot(TABLE_ENTRIES, [A, B, C], NODE_IP)
    for _ in range(3):
        assert ask(containers[A], C.instance_ip) == ("c", A.instance_ip)
        assert ask(containers[A], B.instance_ip_v6) == ("b", A.instance_ip_v6)


def test_ipv6_round_robin(node, backend):
    _, containers = node
    backend.push_snapshot(TABLE_ENTRIES, [A, B, C], NODE_IP)
    answers = [ask(containers[A], RR.service_ip_v6) for _ in range(4)]
    assert sorted(tag for tag, _ in answers) == ["b", "b", "c", "c"]
    assert {peer for _, peer in answers} == {A.instance_ip_v6}


def test_a_new_table_changes_new_connections_only(node, backend):
    _, containers = node
    backend.push_snapshot(TABLE_ENTRIES, [A, B, C], NODE_IP)
    assert {ask(containers[A], RR.service_ip)[0] for _ in range(2)} == {"b", "c"}
    without_c = [ServiceEntry(RR.service_ip, RR.service_ip_v6, "RR", (B,)), *instance_ips(A, B)]
    backend.push_snapshot(without_c, [A, B], NODE_IP)
    assert {ask(containers[A], RR.service_ip)[0] for _ in range(4)} == {"b"}
    with pytest.raises(nstools.NsToolsError):  # no rule any more, and no TUN here
        ask(containers[A], C.instance_ip)


def test_unknown_callers_and_remote_services_are_left_alone(node, backend):
    _, containers = node
    remote = Endpoint("X.d.far.d", 0, "10.16.0.66", "fc00::66", "10.30.0.9", "fdff::9",
                      "198.18.0.2", 50103)  # fmt: skip
    mixed = ServiceEntry("10.30.1.40", "fdff:2000::28", "RR", (B, remote))
    backend.push_snapshot([*TABLE_ENTRIES, mixed], [B, C], NODE_IP)  # A is no local instance
    assert backend.plan is not None
    assert "10.30.1.40" in backend.plan.skipped
    with pytest.raises(nstools.NsToolsError):  # the TUN's business (there is none here)
        ask(containers[A], RR.service_ip)


def test_traffic_is_reported_as_use(node, backend):
    _, containers = node
    backend.push_snapshot(TABLE_ENTRIES, [A, B, C], NODE_IP)
    ask(containers[A], CLOSEST.service_ip)
    wait_until(lambda: ["X.d.server.d"] in backend.used, timeout=5)


ONE_FLOW = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3)
for _ in sys.stdin:  # one datagram and its answer per line, always over this one flow
    sock.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    print(sock.recv(100).split()[0].decode(), flush=True)
"""


def test_an_established_flow_counts_as_use_while_it_sends_and_not_when_quiet(node):
    node_ns, containers = node
    used: list[list[str]] = []
    in_node = ["ip", "netns", "exec", node_ns]
    kernel = KernelBackend(StandIn(), Nft(in_node), bridge="oak-br0", on_used=used.append,
                           poll_interval=3600, conntrack=Conntrack(in_node))  # fmt: skip
    argv = [sys.executable, "-c", ONE_FLOW, CLOSEST.service_ip, str(PORT)]
    flow = nstools.popen_in(containers[A], argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert flow.stdin is not None and flow.stdout is not None

    def exchange() -> str:
        flow.stdin.write("\n")
        flow.stdin.flush()
        return flow.stdout.readline().strip()

    kernel.start()
    try:
        kernel.push_snapshot(TABLE_ENTRIES, [A, B, C], NODE_IP)
        kernel._run_once()  # what earlier tests left in conntrack is new to this backend
        used.clear()
        assert exchange() == "b"  # a new flow
        kernel._run_once()
        assert used == [["X.d.server.d"]]
        kernel._run_once()  # the flow is established and sent nothing since
        assert used == [["X.d.server.d"]]
        assert exchange() == "b"  # the same flow again
        kernel._run_once()
        assert used == [["X.d.server.d"], ["X.d.server.d"]]
        counters = kernel.counters()  # each listing is timed (it paces the next)
        assert counters["kernel_use_listings"] == 4 and counters["kernel_use_listing_seconds"] > 0
    finally:
        nstools.stop_process(flow)
        kernel.stop()


def test_stop_removes_our_table_and_nothing_else(node):
    node_ns, containers = node
    nstools.run_in(node_ns, ["nft", "add", "table", "inet", "someone_else"])
    kernel = KernelBackend(
        StandIn(), Nft(["ip", "netns", "exec", node_ns]), bridge="oak-br0", on_used=print
    )
    kernel.start()
    kernel.push_snapshot(TABLE_ENTRIES, [A, B, C], NODE_IP)
    assert TABLE in tables(node_ns)
    assert ask(containers[A], B.instance_ip)[0] == "b"
    kernel.stop()
    listing = tables(node_ns)
    assert TABLE not in listing and "someone_else" in listing
    assert kernel.inner.stopped  # type: ignore[attr-defined]


def test_flows_to_an_instance_that_left_pick_again(node, backend):
    _, containers = node
    backend.push_snapshot(TABLE_ENTRIES, [A, B, C], NODE_IP)
    argv = [sys.executable, "-c", STICKY_UDP, RR.service_ip, str(PORT), "c"]
    flow = nstools.popen_in(
        containers[A], argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert flow.stdout is not None and flow.stdin is not None
        assert flow.stdout.readline().strip() == "landed"
        without_c = [ServiceEntry(RR.service_ip, RR.service_ip_v6, "RR", (B,)), *instance_ips(A, B)]
        backend.push_snapshot(without_c, [A, B], NODE_IP)  # C left (its server still runs)
        flow.stdin.write("go\n")
        flow.stdin.flush()
        assert flow.stdout.readline().strip() == "b"  # the same socket, now to B
        assert backend.counters()["kernel_flows_forgotten"] >= 1
    finally:
        nstools.stop_process(flow)


class WatchingStandIn(StandIn):
    """A stand-in proxy that, the moment it gets a table, makes a new connection from A
    to a service IP: what a caller would get while the proxy switches to that table."""

    def __init__(self, caller: str, service_ip: str) -> None:
        super().__init__()
        self.caller, self.service_ip = caller, service_ip
        self.answers: list[str] = []

    def push_snapshot(self, services, local_instances, node_ip) -> None:
        super().push_snapshot(services, local_instances, node_ip)
        try:
            self.answers.append(ask(self.caller, self.service_ip)[0])
        except nstools.NsToolsError:
            self.answers.append("proxy")  # no kernel rule: the route to the TUN decides


def test_a_service_gaining_a_remote_instance_leaves_the_kernel_before_the_proxy_switches(node):
    """RR with all instances here, then one more on another node: once the proxy has the
    new table, no new connection may still be DNATed by the old rule to the local
    instances only (the remote instance would never get a call)."""
    node_ns, containers = node
    remote = Endpoint("X.d.server.d", 2, "10.16.0.66", "fc00::66", "10.30.0.9", "fdff::9",
                      "198.18.0.2", 50103)  # fmt: skip
    proxy = WatchingStandIn(containers[A], RR.service_ip)
    kernel = KernelBackend(
        proxy, Nft(["ip", "netns", "exec", node_ns]), bridge="oak-br0", on_used=print
    )
    kernel.start()
    try:
        kernel.push_snapshot(TABLE_ENTRIES, [A, B, C], NODE_IP)
        assert ask(containers[A], RR.service_ip)[0] in ("b", "c")  # all local: the kernel's
        mixed = ServiceEntry(RR.service_ip, RR.service_ip_v6, "RR", (B, C, remote))
        kernel.push_snapshot([mixed, *TABLE_ENTRIES[1:]], [A, B, C], NODE_IP)
        assert proxy.answers[-1] == "proxy"
        assert kernel.plan is not None and RR.service_ip in kernel.plan.skipped
    finally:
        kernel.stop()


# ------------------------------------------------ an instance calling itself (hairpin)

ONLY_B = ServiceEntry("10.30.1.50", "fdff:2000::32", "RR", (B,))
B_AND_C = ServiceEntry("10.30.1.51", "fdff:2000::33", "RR", (B, C))
CLOSEST_B = ServiceEntry("10.30.1.52", "fdff:1000::34", "Closest", (B,))
ENTRIES = [ONLY_B, B_AND_C, CLOSEST_B, *instance_ips(A, B, C)]


@pytest.mark.parametrize("family", [4, 6])
def test_an_instance_reaches_its_own_instance_ip(node, backend, family):
    _, containers = node
    backend.push_snapshot(ENTRIES, [A, B, C], NODE_IP)
    own = B.instance_ip if family == 4 else B.instance_ip_v6
    assert ask(containers[B], own) == ("b", own)
    assert udp_ask(containers[B], own) == ["b", own, own]


@pytest.mark.parametrize("family", [4, 6])
def test_an_instance_reaches_rr_and_closest_ips_whose_only_instance_it_is(node, backend, family):
    _, containers = node
    backend.push_snapshot(ENTRIES, [A, B, C], NODE_IP)
    own = B.instance_ip if family == 4 else B.instance_ip_v6
    for entry in (ONLY_B, CLOSEST_B):
        service_ip = entry.service_ip if family == 4 else entry.service_ip_v6
        for _ in range(2):
            assert ask(containers[B], service_ip) == ("b", own)
            assert udp_ask(containers[B], service_ip) == ["b", own, service_ip]


@pytest.mark.parametrize("family", [4, 6])
def test_every_new_connection_to_an_rr_ip_with_itself_is_answered(node, backend, family):
    _, containers = node
    backend.push_snapshot(ENTRIES, [A, B, C], NODE_IP)
    service_ip = B_AND_C.service_ip if family == 4 else B_AND_C.service_ip_v6
    own = B.instance_ip if family == 4 else B.instance_ip_v6
    tcp = [ask(containers[B], service_ip) for _ in range(4)]
    assert sorted(tag for tag, _ in tcp) == ["b", "b", "c", "c"]
    assert {peer for _, peer in tcp} == {own}
    udp = [udp_ask(containers[B], service_ip) for _ in range(4)]
    assert sorted(tag for tag, _, _ in udp) == ["b", "b", "c", "c"]
    assert {(peer, source) for _, peer, source in udp} == {(own, service_ip)}
