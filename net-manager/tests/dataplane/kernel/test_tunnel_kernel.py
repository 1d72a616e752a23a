"""The kernel tunnel between two nodes of our own (namespaces), end to end.

Two node namespaces joined by an underlay veth (198.18.0.1 and .2), each with the bridge
`oak-br0`, its containers (ports attached by the node's `ensure_veth`) and a
KernelBackend whose tunnel the node's own `Kernel` makes (as the reconciler does). No
TUN proxy: a stand-in that says which peers announced the kernel tunnel, so whatever
the kernel does not serve goes nowhere. Node 1 has the caller A and a server L, node 2
the servers R1 and R2; node 2's table does not know A (the return path must not need it).
What a user would see: RR and instance IPs reach remote instances (and a mix of local
and remote ones), the server sees the caller's instance IP, the caller gets its replies
from the service IP, over TCP and UDP, IPv4 and IPv6, both ways; a peer without the
kernel tunnel keeps the TUN; a stranger's datagram to the VXLAN port is dropped, and so
is a container's packet straight to a remote namespace IP; stop removes it all.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.io.probes import CAP_VXLAN, CAP_VXLAN_PEER
from net_manager.dataplane.kernel.backend import KernelBackend
from net_manager.dataplane.kernel.nft import Nft
from net_manager.dataplane.kernel.ruleset import TABLE
from net_manager.node.kernel import Kernel
from net_manager.node.tunnel import DEVICE, mac_of
from testsupport import nstools, wait_until

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (apt install nftables)"),
]

ONE, TWO, THREE = "198.18.0.1", "198.18.0.2", "198.18.0.3"
PORT, VXLAN_PORT = 7000, 50104
BOTH = CAP_VXLAN | CAP_VXLAN_PEER
A = Endpoint("X.d.client.d", 0, "10.16.0.2", "fc00::2", "10.30.0.2", "fdff::2", ONE, 50103)
L = Endpoint("X.d.server.d", 0, "10.16.0.3", "fc00::3", "10.30.0.3", "fdff::3", ONE, 50103)
R1 = Endpoint("X.d.server.d", 1, "10.16.0.66", "fc00::166", "10.30.0.66", "fdff::66", TWO, 50103)
R2 = Endpoint("X.d.server.d", 2, "10.16.0.67", "fc00::167", "10.30.0.67", "fdff::67", TWO, 50103)
U = Endpoint("X.d.server.d", 3, "10.16.0.130", "fc00::230", "10.30.0.99", "fdff::99", THREE, 50103)
REMOTE = ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (R1, R2))
MIXED = ServiceEntry("10.30.1.31", "fdff:2000::1f", "RR", (L, R1))
WITH_UPSTREAM = ServiceEntry("10.30.1.32", "fdff:2000::20", "RR", (R1, U))
CLOSEST = ServiceEntry("10.30.1.33", "fdff:1000::21", "Closest", (R2,))
NO_DAD = ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
NODES = {
    ONE: ("10.16.0.1/26", "fc00::1/120", (A, L)),
    TWO: ("10.16.0.65/26", "fc00::101/120", (R1, R2)),
}
TAGS = {L: "l", R1: "r1", R2: "r2"}
NODE_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv6.conf.all.forwarding=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
)


def instance_ips(*endpoints: Endpoint) -> list[ServiceEntry]:
    return [ServiceEntry(e.instance_ip, e.instance_ip_v6, "instance_ip", (e,)) for e in endpoints]


TABLE_ONE = [REMOTE, MIXED, WITH_UPSTREAM, CLOSEST, *instance_ips(A, L, R1, R2, U)]
TABLE_TWO = [*instance_ips(L, R1, R2)]  # A unknown on node 2

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


class StandIn:
    """The TUN proxy's place: no packets, just the peers its probes found."""

    def __init__(self, capabilities: dict[str, int]) -> None:
        self.rtt: dict[str, float] = {}
        self.peer_capabilities = capabilities
        self.stopped = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True

    def push_snapshot(self, services, local_instances, node_ip) -> None:
        pass

    def counters(self) -> dict[str, int | float]:
        return {}


def on_tunnel_of(node_ns: str):
    """What the daemon's reconciler does with the backend's tunnel (synchronously)."""

    def apply(spec) -> None:
        with Kernel(node_ns) as kernel:
            if spec is None:
                kernel.delete_tunnel(DEVICE, "oak-br0")
            else:
                kernel.ensure_tunnel(spec)

    return apply


@pytest.fixture
def nodes():
    """{node IP: node namespace}, {endpoint: container namespace}; servers on L, R1, R2."""
    with nstools.namespaces() as ns:
        node_ns = {ONE: ns.netns(), TWO: ns.netns()}
        nstools.veth_between(
            node_ns[ONE], "ul0", node_ns[TWO], "ul0",
            addresses_a=[f"{ONE}/24", f"{THREE}/24"],  # .3: the stranger's address
            addresses_b=[f"{TWO}/24"],
        )  # fmt: skip
        containers = {}
        for node_ip, (v4, v6, endpoints) in NODES.items():
            run = lambda *argv, n=node_ns[node_ip]: nstools.run_in(n, list(argv))  # noqa: E731
            run("sysctl", "-qw", *NO_DAD, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
            run(
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            )
            run("ip", "link", "add", "oak-br0", "type", "bridge")
            run("ip", "addr", "add", v4, "dev", "oak-br0")
            run("ip", "addr", "add", v6, "dev", "oak-br0", "nodad")
            run("ip", "link", "set", "oak-br0", "up")
            for index, endpoint in enumerate(endpoints):
                container = ns.netns()
                nstools.run_in(container, ["sysctl", "-qw", *NO_DAD])
                host_side = f"oak-h{index}"
                nstools.veth_between(
                    node_ns[node_ip], host_side, container, "eth0",
                    addresses_b=[f"{endpoint.namespace_ip}/26", f"{endpoint.namespace_ip_v6}/120"],
                )  # fmt: skip
                with Kernel(node_ns[node_ip]) as kernel:
                    kernel.ensure_veth(host_side, f"oak-c{index}", "oak-br0", 1450)
                gw4, gw6 = v4.split("/")[0], v6.split("/")[0]
                nstools.run_in(container, ["ip", "link", "set", "eth0", "mtu", "1450"])
                nstools.run_in(container, ["ip", "route", "add", "default", "via", gw4])
                nstools.run_in(container, ["ip", "-6", "route", "add", "default", "via", gw6])
                containers[endpoint] = container
        for endpoint, tag in TAGS.items():
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


def backend_of(node_ns: str, capabilities: dict[str, int]) -> KernelBackend:
    return KernelBackend(
        StandIn(capabilities),
        Nft(["ip", "netns", "exec", node_ns]),
        bridge="oak-br0",
        on_used=lambda jobs: None,
        poll_interval=0.2,
        tunnel_port=VXLAN_PORT,
        tunnel_mtu=1450,
        on_tunnel=on_tunnel_of(node_ns),
    )


@pytest.fixture
def backends(nodes):
    node_ns, _ = nodes
    one = backend_of(node_ns[ONE], {TWO: BOTH, THREE: 0})  # .3 answers probes: no tunnel
    two = backend_of(node_ns[TWO], {ONE: BOTH})
    for backend in (one, two):
        backend.start()
    two.push_snapshot(TABLE_TWO, [R1, R2], TWO)
    one.push_snapshot(TABLE_ONE, [A, L], ONE)
    yield one, two
    for backend in (one, two):
        backend.stop()


def ask(container: str, host: str) -> tuple[str, str]:
    """(server tag, the caller address the server saw) over a new TCP connection."""
    tag, peer = nstools.tcp_request(container, host, PORT, timeout=5).split()
    return tag, peer


def udp_ask(container: str, host: str) -> list[str]:
    """[server tag, caller address the server saw, address the answer came from]."""
    argv = [sys.executable, "-c", UDP_CLIENT, host, str(PORT)]
    return nstools.run_in(container, argv).stdout.split()


def pick(entry: ServiceEntry, family: int) -> str:
    return entry.service_ip if family == 4 else entry.service_ip_v6


def own(endpoint: Endpoint, family: int) -> str:
    return endpoint.instance_ip if family == 4 else endpoint.instance_ip_v6


@pytest.mark.parametrize("family", [4, 6])
def test_rr_reaches_the_remote_instances_over_tcp(nodes, backends, family):
    _, containers = nodes
    answers = [ask(containers[A], pick(REMOTE, family)) for _ in range(4)]
    assert sorted(tag for tag, _ in answers) == ["r1", "r1", "r2", "r2"]
    assert {peer for _, peer in answers} == {own(A, family)}  # the caller's instance IP
    one, _ = backends
    assert one.plan is not None and REMOTE.service_ip in one.plan.service_ips()


@pytest.mark.parametrize("family", [4, 6])
def test_udp_replies_come_from_the_service_ip(nodes, backends, family):
    _, containers = nodes
    tags = set()
    for _ in range(4):
        tag, seen, source = udp_ask(containers[A], pick(REMOTE, family))
        assert (seen, source) == (own(A, family), pick(REMOTE, family))
        tags.add(tag)
    assert tags == {"r1", "r2"}


@pytest.mark.parametrize("family", [4, 6])
def test_rr_over_local_and_remote_instances(nodes, backends, family):
    _, containers = nodes
    tcp = [ask(containers[A], pick(MIXED, family)) for _ in range(4)]
    assert sorted(tag for tag, _ in tcp) == ["l", "l", "r1", "r1"]
    assert {peer for _, peer in tcp} == {own(A, family)}
    udp = [udp_ask(containers[A], pick(MIXED, family)) for _ in range(4)]
    assert sorted(tag for tag, _, _ in udp) == ["l", "l", "r1", "r1"]
    assert {(seen, source) for _, seen, source in udp} == {(own(A, family), pick(MIXED, family))}


@pytest.mark.parametrize("family", [4, 6])
def test_instance_ips_and_closest_of_remote_instances(nodes, backends, family):
    _, containers = nodes
    assert ask(containers[A], own(R2, family)) == ("r2", own(A, family))
    assert udp_ask(containers[A], own(R1, family)) == ["r1", own(A, family), own(R1, family)]
    assert ask(containers[A], pick(CLOSEST, family)) == ("r2", own(A, family))


@pytest.mark.parametrize("family", [4, 6])
def test_the_other_way_round(nodes, backends, family):
    """R1 on node 2 calls L's instance IP on node 1: node 1 routes the reply back."""
    _, containers = nodes
    assert ask(containers[R1], own(L, family)) == ("l", own(R1, family))
    assert udp_ask(containers[R1], own(L, family)) == ["l", own(R1, family), own(L, family)]


def test_a_service_with_an_instance_on_a_peer_without_the_tunnel_stays_on_the_tun(nodes, backends):
    _, containers = nodes
    one, _ = backends
    assert one.plan is not None
    assert one.plan.skipped[WITH_UPSTREAM.service_ip] == (
        "an instance on a node without the kernel tunnel"
    )
    assert one.plan.skipped[U.instance_ip] == "instance on a node without the kernel tunnel"
    with pytest.raises(nstools.NsToolsError):  # the TUN's business (there is none here)
        ask(containers[A], WITH_UPSTREAM.service_ip)
    assert one.tunnel is not None and [p.node_ip for p in one.tunnel.peers] == [TWO]


def test_a_container_cannot_reach_a_remote_namespace_ip_directly(nodes, backends):
    _, containers = nodes
    with pytest.raises(nstools.NsToolsError):
        nstools.tcp_request(containers[A], R1.namespace_ip, PORT, timeout=2)


def tunnel_in_drops(node_ns: str) -> int:
    listing = nstools.run_in(node_ns, ["nft", "list", "chain", "inet", TABLE, "tunnel_in"]).stdout
    for line in listing.splitlines():
        if f"udp dport {VXLAN_PORT}" in line and "@tunnel_peers_v4" in line:
            return int(line.split("packets")[1].split()[0])
    raise AssertionError(f"no admission rule in {listing}")


STRANGER = r"""
import socket, struct, sys
src, dst, port, frame = sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((src, 0))
sock.sendto(struct.pack("!II", 0x08000000, 1 << 8) + frame, (dst, port))
"""


def test_a_strangers_datagram_to_the_vxlan_port_is_dropped(nodes, backends):
    node_ns, _ = nodes
    before = tunnel_in_drops(node_ns[TWO])
    # An Ethernet frame as node 1 would send it (its MAC, to node 2's device): only the
    # outer source (.3, no peer) differs.
    ether = bytes.fromhex(mac_of(TWO).replace(":", "")) + bytes.fromhex(
        mac_of(ONE).replace(":", "")
    )
    frame = ether + b"\x08\x00" + bytes(20)
    argv = [sys.executable, "-c", STRANGER, THREE, TWO, str(VXLAN_PORT), frame.hex()]
    nstools.run_in(node_ns[ONE], argv)
    wait_until(lambda: tunnel_in_drops(node_ns[TWO]) > before, timeout=5)


def test_stop_removes_the_device_its_rules_and_our_table(nodes):
    node_ns, containers = nodes
    one = backend_of(node_ns[ONE], {TWO: BOTH})
    two = backend_of(node_ns[TWO], {ONE: BOTH})
    for backend in (one, two):
        backend.start()
    two.push_snapshot(TABLE_TWO, [R1, R2], TWO)
    one.push_snapshot(TABLE_ONE, [A, L], ONE)
    assert ask(containers[A], REMOTE.service_ip)[0] in ("r1", "r2")
    for node_ip in (ONE, TWO):
        assert "fwmark" in nstools.run_in(node_ns[node_ip], ["ip", "rule"]).stdout
    for backend in (one, two):
        backend.stop()
    for node_ip in (ONE, TWO):
        run = lambda *argv, n=node_ns[node_ip]: nstools.run_in(n, list(argv)).stdout  # noqa: E731
        assert DEVICE not in run("ip", "link")
        assert "fwmark" not in run("ip", "rule") and "fwmark" not in run("ip", "-6", "rule")
        assert TABLE not in run("nft", "list", "tables")


def test_underlay_sees_vxlan_on_its_own_port(nodes, backends):
    """The device listens on the VXLAN port of node 2 (and not on the tunnel port)."""
    node_ns, _ = nodes
    listing = nstools.run_in(node_ns[TWO], ["ss", "-uln"]).stdout
    assert f":{VXLAN_PORT}" in listing
    assert socket.inet_aton(TWO)  # the device's local address is the node IP
    with Kernel(node_ns[TWO]) as kernel:
        state = kernel.tunnel_state()
    assert state["local"] == TWO and state["port"] == VXLAN_PORT and not state["learning"]
    assert state["fdb"] == [(mac_of(ONE), ONE)]
