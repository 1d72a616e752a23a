"""Kernel tier: `Kernel` and `Reconciler` against real namespaces (root needed).

Each test builds its own node namespace (oakt-<random>), container processes sleeping
in fresh namespaces and, for port mappings, an "outside" namespace wired to the node by
a veth pair; all of it is removed afterwards, also on failure. State is read back with
`ip -j` and `iptables-save` (not through the code under test) and reachability is
checked with Python sockets, so no ping is needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass

import pytest

from net_manager.node.kernel import (
    BRIDGE,
    TUN,
    InterfaceNotFound,
    Kernel,
    KernelError,
    NamespaceNotFound,
    netns_path_of_pid,
)
from net_manager.node.portmap import PortMapping
from net_manager.node.reconciler import ContainerSpec, DesiredState, NodeSpec, Reconciler
from testsupport import nstools

_MISSING = [
    tool for tool in ("ip", "nsenter", "unshare", "iptables", "ip6tables") if not shutil.which(tool)
]
pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="kernel tests need root (namespaces, iptables)"),
    pytest.mark.skipif(bool(_MISSING), reason=f"kernel tests need {', '.join(_MISSING)}"),
]

MTU = 1450
NODE = NodeSpec(
    bridge=BRIDGE,
    bridge_v4_cidr="10.16.0.1/26",
    bridge_v6_cidr="fc00::1/120",
    subnet_v4="10.16.0.0/26",
    subnet_v6="fc00::/120",
    mtu=MTU,
    tun=TUN,
)
WEB = PortMapping(host_port=8080, container_port=80, protocol="tcp")


@dataclass
class Node:
    name: str
    kernel: Kernel


@pytest.fixture
def ns():
    with nstools.namespaces() as tracker:
        yield tracker


@pytest.fixture
def node(ns):
    name = ns.netns()
    kernel = Kernel(netns=name)
    try:
        yield Node(name, kernel)
    finally:
        kernel.close()


def set_up_node(kernel: Kernel) -> None:
    kernel.ensure_sysctls()
    kernel.ensure_bridge(NODE.bridge, NODE.bridge_v4_cidr, NODE.bridge_v6_cidr, MTU)
    kernel.ensure_base_rules(NODE.bridge, NODE.tun, NODE.subnet_v4, NODE.subnet_v6)


def spec(n: int, container: nstools.Container, mappings=()) -> ContainerSpec:
    return ContainerSpec(
        key=f"app.ns.svc{n}.ns.{n}",
        host_veth=f"oak-h{n}",
        peer_veth=f"oak-c{n}",
        netns_path=container.netns_path,
        namespace_ip=f"10.16.0.{n + 1}",
        namespace_ip_v6=f"fc00::{n + 1:x}",
        port_mappings=tuple(mappings),
    )


def attach(kernel: Kernel, container_spec: ContainerSpec) -> None:
    s = container_spec
    kernel.ensure_veth(s.host_veth, s.peer_veth, NODE.bridge, MTU)
    kernel.move_into_container(s.peer_veth, s.netns_path)
    kernel.configure_container(
        s.netns_path,
        "eth0",
        f"{s.namespace_ip}/26",
        f"{s.namespace_ip_v6}/120",
        "10.16.0.1",
        "fc00::1",
        MTU,
    )
    for mapping in s.port_mappings:
        kernel.ensure_port_mapping(mapping, s.namespace_ip, s.namespace_ip_v6)


def ip_json(netns: str, *args: str):
    return json.loads(nstools.run_in(netns, ["ip", "-j", *args]).stdout or "[]")


def global_addresses(netns: str, dev: str) -> set[str]:
    [link] = ip_json(netns, "addr", "show", "dev", dev)
    return {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["scope"] == "global"}


def firewall(netns: str) -> str:
    """iptables-save and ip6tables-save of the namespace, without timestamps and counters."""
    text = "".join(
        nstools.run_in(netns, [tool]).stdout for tool in ("iptables-save", "ip6tables-save")
    )
    lines = [
        re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#")
    ]
    return "\n".join(lines)


def sysctl(netns: str, key: str) -> str:
    return nstools.run_in(netns, ["cat", f"/proc/sys/{key}"]).stdout.strip()


def _steady(value):
    """`ip -j -d` output minus what changes by itself (bridge timers, operstate)."""
    if isinstance(value, dict):
        return {
            k: _steady(v) for k, v in value.items() if not k.endswith("_timer") and k != "operstate"
        }
    if isinstance(value, list):
        return [_steady(item) for item in value]
    return value


def snapshot(node: Node, *containers: nstools.Container) -> dict:
    """Links, addresses, routes and firewall rules of the node and the containers."""
    state = {"firewall": firewall(node.name)}
    for where in [node.name, *(c.netns_path for c in containers)]:
        routes = ip_json(where, "route", "show", "table", "all")
        routes += ip_json(where, "-6", "route", "show", "table", "all")
        state[where] = [
            _steady(ip_json(where, "-d", "link", "show")),
            ip_json(where, "addr", "show"),
            sorted(json.dumps(route, sort_keys=True) for route in routes),  # dump order varies
        ]
    return state


# ---- node ---------------------------------------------------------------------------


def test_bridge_is_up_with_mtu_and_exactly_its_addresses(node):
    node.kernel.ensure_bridge(BRIDGE, "10.16.0.1/26", "fc00::1/120", MTU)

    [link] = ip_json(node.name, "-d", "link", "show", "dev", BRIDGE)
    assert link["mtu"] == MTU
    assert "UP" in link["flags"]
    assert link["linkinfo"]["info_kind"] == "bridge"
    assert global_addresses(node.name, BRIDGE) == {"10.16.0.1/26", "fc00::1/120"}

    nstools.run_in(node.name, ["ip", "addr", "add", "10.99.0.1/24", "dev", BRIDGE])
    node.kernel.ensure_bridge(BRIDGE, "10.16.0.1/26", "fc00::1/120", MTU)
    assert global_addresses(node.name, BRIDGE) == {"10.16.0.1/26", "fc00::1/120"}


def own_forwarding() -> str:
    with open("/proc/sys/net/ipv4/ip_forward") as current:  # read only
        return current.read().strip()


def test_node_sysctls_are_set_inside_the_node_namespace_only(node):
    outside_forwarding = own_forwarding()

    node.kernel.ensure_sysctls()

    assert sysctl(node.name, "net/ipv4/ip_forward") == "1"
    assert sysctl(node.name, "net/ipv6/conf/all/forwarding") == "1"
    assert sysctl(node.name, "net/ipv4/conf/all/rp_filter") == "0"
    assert sysctl(node.name, "net/ipv4/conf/default/rp_filter") == "0"
    assert own_forwarding() == outside_forwarding


# ---- containers ---------------------------------------------------------------------


def test_container_gets_addresses_routes_mtu_with_dad_off(node, ns):
    set_up_node(node.kernel)
    container = ns.container()
    attach(node.kernel, spec(1, container))

    where = container.netns_path
    [eth0] = ip_json(where, "link", "show", "dev", "eth0")
    assert eth0["mtu"] == MTU and "UP" in eth0["flags"]
    assert global_addresses(where, "eth0") == {"10.16.0.2/26", "fc00::2/120"}
    [default_v4] = ip_json(where, "route", "show", "default")
    [default_v6] = ip_json(where, "-6", "route", "show", "default")
    assert (default_v4["gateway"], default_v4["dev"]) == ("10.16.0.1", "eth0")
    assert (default_v6["gateway"], default_v6["dev"]) == ("fc00::1", "eth0")
    assert sysctl(where, "net/ipv6/conf/default/accept_dad") == "0"
    assert sysctl(where, "net/ipv6/conf/eth0/accept_dad") == "0"
    [host] = ip_json(node.name, "-d", "link", "show", "dev", "oak-h1")
    assert host["master"] == BRIDGE and host["mtu"] == MTU and "UP" in host["flags"]
    assert host["linkinfo"]["info_slave_data"]["hairpin"] is True  # reaches itself via DNAT
    assert not node.kernel.link_exists("oak-c1")  # the peer went into the container

    state = node.kernel.container_state(where)
    assert state["addresses"] == ["10.16.0.2/26", "fc00::2/120"]
    assert state["tentative"] == []
    assert {"dst": "0.0.0.0/0", "gateway": "10.16.0.1"} in state["routes"]
    assert {"dst": "::/0", "gateway": "fc00::1"} in state["routes"]
    assert (state["mtu"], state["up"]) == (MTU, True)


def test_containers_reach_each_other_by_namespace_ip_v4_and_v6(node, ns):
    set_up_node(node.kernel)
    first, second = ns.container(), ns.container()
    attach(node.kernel, spec(1, first))
    attach(node.kernel, spec(2, second))
    ns.track(nstools.tcp_echo_server(second.netns_path, "::", 7000, "second"))

    assert nstools.tcp_request(first.netns_path, "10.16.0.3", 7000) == "second 10.16.0.2"
    assert nstools.tcp_request(first.netns_path, "fc00::3", 7000) == "second fc00::2"
    assert nstools.tcp_request(node.name, "10.16.0.3", 7000) == "second 10.16.0.1"


def test_port_mapping_reaches_the_container_from_outside_but_not_containers_outbound(node, ns):
    set_up_node(node.kernel)
    for tool in ("iptables", "ip6tables"):  # only our OAK-FORWARD rules let traffic through
        nstools.run_in(node.name, [tool, "-P", "FORWARD", "DROP"])
    outside = ns.netns()
    nstools.veth_between(
        node.name,
        "ext0",
        outside,
        "ext1",
        addresses_a=["198.18.0.1/24", "2001:db8::1/64"],
        addresses_b=["198.18.0.2/24", "2001:db8::2/64"],
    )
    server, client = ns.container(), ns.container()
    attach(node.kernel, spec(1, server, [WEB]))
    attach(node.kernel, spec(2, client))
    ns.track(nstools.tcp_echo_server(server.netns_path, "::", 80, "container"))
    ns.track(nstools.tcp_echo_server(outside, "::", 8080, "outside"))

    # From outside to the node's address: DNAT to the container, source kept.
    assert nstools.tcp_request(outside, "198.18.0.1", 8080) == "container 198.18.0.2"
    # At once: forwarded IPv6 needs the bridge's link-local address, which must not wait
    # for duplicate address detection (about a second).
    assert nstools.tcp_request(outside, "2001:db8::1", 8080, timeout=0.9) == "container 2001:db8::2"
    # A host process reaching the mapped port on the node's address.
    assert nstools.tcp_request(node.name, "198.18.0.1", 8080) == "container 198.18.0.1"
    # A container's own connection to port 8080 elsewhere is not redirected (it is
    # masqueraded on its way out).
    assert nstools.tcp_request(client.netns_path, "198.18.0.2", 8080) == "outside 198.18.0.1"
    assert nstools.tcp_request(client.netns_path, "2001:db8::2", 8080) == "outside 2001:db8::1"
    assert node.kernel.list_port_mappings() == [("10.16.0.2", WEB)]

    node.kernel.delete_port_mapping(WEB, "10.16.0.2", "fc00::2")
    with pytest.raises(nstools.NsToolsError, match="unreachable"):
        nstools.tcp_request(outside, "198.18.0.1", 8080, timeout=0.5)
    assert node.kernel.list_port_mappings() == []


# Run in the node namespace: creates the TUN as the data plane does, writes a UDP packet
# from a caller's instance IP to the container's closed port 9 (what the data plane
# writes after admission) and prints the source of the ICMP answer read back.
THROUGH_TUN = r"""
import os, select, sys
from net_manager.dataplane.core.microbench import build_packet
from net_manager.dataplane.io.tun import open_tun
tun = open_tun(sys.argv[1], "10.19.1.254/12", "", 1450)
os.write(tun.fileno(), build_packet("10.30.0.9", sys.argv[2], 17, 4000, 9))
while select.select([tun.fileno()], [], [], 3)[0]:
    packet = os.read(tun.fileno(), 2048)
    if packet[0] >> 4 == 4 and packet[9] == 1 and packet[16:20] == bytes([10, 30, 0, 9]):
        print(".".join(map(str, packet[12:16])), packet[20])
        break
"""


def test_the_uplink_reaches_containers_only_through_the_tunnel_or_a_port_mapping(node, ns):
    set_up_node(node.kernel)  # FORWARD policy left at ACCEPT: only our rules decide
    outside = ns.netns()
    nstools.veth_between(
        node.name,
        "ext0",
        outside,
        "ext1",
        addresses_a=["198.18.0.1/24", "2001:db8::1/64"],
        addresses_b=["198.18.0.2/24", "2001:db8::2/64"],
    )
    nstools.run_in(outside, ["ip", "route", "add", "10.16.0.0/26", "via", "198.18.0.1"])
    nstools.run_in(outside, ["ip", "-6", "route", "add", "fc00::/120", "via", "2001:db8::1"])
    server = ns.container()
    attach(node.kernel, spec(1, server, [WEB]))
    ns.track(nstools.tcp_echo_server(server.netns_path, "::", 80, "container"))

    # Routed straight from the underlay to the namespace IP: dropped, v4 and v6.
    for address in ("10.16.0.2", "fc00::2"):
        with pytest.raises(nstools.NsToolsError, match="unreachable"):
            nstools.tcp_request(outside, address, 80, timeout=0.5)
    # The declared port mapping still reaches it.
    assert nstools.tcp_request(outside, "198.18.0.1", 8080) == "container 198.18.0.2"
    # So does what the data plane writes to the TUN: the container answers (ICMP type 3,
    # port unreachable) to the caller's instance IP, back through the TUN.
    answer = nstools.run_in(node.name, [sys.executable, "-c", THROUGH_TUN, TUN, "10.16.0.2"])
    assert answer.stdout.split() == ["10.16.0.2", "3"]


def test_deleting_everything_leaves_nothing_of_ours(node, ns):
    set_up_node(node.kernel)
    container = ns.container()
    attach(node.kernel, spec(1, container, [WEB, PortMapping(9000, 9000, "udp")]))

    for mapping in (WEB, PortMapping(9000, 9000, "udp")):
        node.kernel.delete_port_mapping(mapping, "10.16.0.2", "fc00::2")
    for name in node.kernel.list_links():
        node.kernel.delete_link(name)
    node.kernel.delete_base_rules()

    assert node.kernel.list_links() == []
    assert node.kernel.list_port_mappings() == []
    assert "OAK" not in firewall(node.name)
    assert [link["ifname"] for link in ip_json(container.netns_path, "link", "show")] == ["lo"]
    # Deleting what is gone is fine.
    node.kernel.delete_link("oak-h1")
    node.kernel.delete_base_rules()
    node.kernel.delete_port_mapping(WEB, "10.16.0.2")


def test_every_ensure_twice_changes_nothing(node, ns):
    container = ns.container()
    container_spec = spec(1, container, [WEB])
    set_up_node(node.kernel)
    attach(node.kernel, container_spec)
    before = snapshot(node, container)

    set_up_node(node.kernel)
    attach(node.kernel, container_spec)

    assert snapshot(node, container) == before
    assert firewall(node.name).count("--dport 8080") == 2  # one v4 and one v6 rule


# ---- reconciler ---------------------------------------------------------------------


def test_reconciler_restores_flushed_state_and_sweeps_the_rest(node, ns):
    for name in (TUN, "oak-stray"):  # stand-ins: the TUN (kept) and a leftover (swept)
        nstools.run_in(node.name, ["ip", "link", "add", name, "type", "bridge"])
    first, second = ns.container(), ns.container()
    specs = (spec(1, first, [WEB]), spec(2, second, [PortMapping(9000, 90, "udp")]))
    desired = DesiredState(node=NODE, containers=specs)
    reconciler = Reconciler(node.kernel, lambda: desired)

    reconciler.sync()
    assert node.kernel.list_links() == [BRIDGE, "oak-h1", "oak-h2", TUN]
    healthy = snapshot(node, first, second)

    nstools.run_in(node.name, ["ip", "addr", "flush", "dev", BRIDGE])
    nstools.run_in(
        node.name, ["iptables", "-t", "nat", "-D", "POSTROUTING", "-j", "OAK-POSTROUTING"]
    )
    nstools.run_in(node.name, ["ip6tables", "-F", "OAK-FORWARD"])
    nstools.run_in(node.name, ["bridge", "link", "set", "dev", "oak-h1", "hairpin", "off"])
    nstools.run_in(node.name, ["iptables", "-t", "nat", "-F", "OAKESTRA"])
    nstools.run_in(first.netns_path, ["ip", "route", "del", "default"])
    nstools.run_in(first.netns_path, ["ip", "addr", "add", "10.16.0.50/26", "dev", "eth0"])
    assert snapshot(node, first, second) != healthy

    reconciler.sync()
    assert snapshot(node, first, second) == healthy

    second.stop()  # its namespace vanishes: "gone", skipped, its leftovers swept
    reconciler.sync()
    assert reconciler.last_error is None
    assert node.kernel.list_links() == [BRIDGE, "oak-h1", TUN]
    assert node.kernel.list_port_mappings() == [("10.16.0.2", WEB)]
    assert reconciler.sync_count == 3


def test_reconciler_sync_container_and_sync_removed(node, ns):
    container = ns.container()
    container_spec = spec(1, container, [WEB])
    reconciler = Reconciler(node.kernel, lambda: DesiredState(node=NODE, containers=()))

    reconciler.sync_container(container_spec)
    assert global_addresses(container.netns_path, "eth0") == {"10.16.0.2/26", "fc00::2/120"}
    assert node.kernel.list_port_mappings() == [("10.16.0.2", WEB)]

    reconciler.sync_removed(container_spec)
    assert node.kernel.list_links() == [BRIDGE]
    assert node.kernel.list_port_mappings() == []


# ---- errors and addresses -----------------------------------------------------------


def test_errors_name_the_missing_object(node, ns):
    with pytest.raises(NamespaceNotFound, match="oakt-no-such-ns"):
        Kernel(netns="oakt-no-such-ns")
    set_up_node(node.kernel)
    with pytest.raises(InterfaceNotFound, match="oak-nobr"):
        node.kernel.ensure_veth("oak-h9", "oak-c9", "oak-nobr", MTU)
    container = ns.container()
    with pytest.raises(InterfaceNotFound, match="eth7"):
        node.kernel.configure_container(
            container.netns_path, "eth7", "10.16.0.9/26", None, "10.16.0.1", None, MTU
        )
    with pytest.raises(InterfaceNotFound, match="oak-c9"):
        node.kernel.move_into_container("oak-c9", container.netns_path)
    node.kernel.ensure_veth("oak-h9", "oak-c9", BRIDGE, MTU)
    pid, path = container.pid, container.netns_path
    container.stop()
    with pytest.raises(NamespaceNotFound, match=str(pid)):
        netns_path_of_pid(pid)
    with pytest.raises(NamespaceNotFound, match=path):
        node.kernel.move_into_container("oak-c9", path)
    with pytest.raises(KernelError, match="node's own network namespace"):
        node.kernel.configure_container(
            f"/run/netns/{node.name}", "oak-h9", "10.16.0.9/26", None, "10.16.0.1", None, MTU
        )
    with pytest.raises(KernelError, match="node's own network namespace"):
        node.kernel.move_into_container("oak-c9", f"/run/netns/{node.name}")
    with pytest.raises(ValueError, match="must start with 'oak-'"):
        node.kernel.ensure_bridge("br0", "10.16.0.1/26", None, MTU)
    with pytest.raises(ValueError, match="protocol"):
        node.kernel.ensure_port_mapping(PortMapping(80, 80, "sctp"), "10.16.0.2")


def test_default_route_address_reads_the_default_route_interface(node, ns):
    with pytest.raises(KernelError, match="no IPv4 default route"):
        node.kernel.default_route_address()
    outside = ns.netns()
    nstools.veth_between(node.name, "ext0", outside, "ext1", addresses_a=["198.18.0.1/24"])
    nstools.veth_between(node.name, "ext2", outside, "ext3", addresses_a=["198.19.0.1/24"])
    nstools.run_in(
        node.name, ["ip", "route", "add", "default", "via", "198.18.0.2", "metric", "100"]
    )
    assert node.kernel.default_route_address() == "198.18.0.1"

    nstools.run_in(
        node.name, ["ip", "route", "add", "default", "via", "198.19.0.2", "metric", "50"]
    )
    assert node.kernel.default_route_address() == "198.19.0.1"  # lowest metric wins
    assert node.kernel.default_route_address("ext0") == "198.18.0.1"
    with pytest.raises(InterfaceNotFound, match="nope0"):
        node.kernel.default_route_address("nope0")
