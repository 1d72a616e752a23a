"""The kernel tunnel between our nodes as desired state (pure, no I/O).

One VXLAN device `oak-vx0` per node (flannel-style): VNI 1, its own UDP port, the node
IP as local address, no learning, a MAC derived from the node IP. Per peer node (one of
ours in kernel mode, see `dataplane/kernel/`):

- an fdb entry peer MAC -> peer node IP (where the device sends that peer's frames);
- a permanent neighbour entry for each of the peer's two gateway addresses: its node
  IP (IPv4 routes) and the link-local address of its MAC (IPv6 routes). Neither ever
  appears in a packet; they only name the next hop whose MAC the frame gets;
- a route per subnet of the peer the table knows: `subnet via <gateway> dev oak-vx0
  onlink` (how our callers reach its instances);
- a route table and an `ip rule fwmark <mark> iif <bridge> lookup <table>` per family,
  the table holding `default via <gateway> dev oak-vx0 onlink`: how the replies of our
  instances to that peer's callers go back (the caller's instance IP says nothing about
  its node; the connection's conntrack mark, set from the sender's MAC, does).

The mark and the table number are the peer's node IPv4 as a number, so every node
derives the same ones without coordination (0.0.0.0/8 is no node address, so they never
hit the reserved tables 0 and 253-255). `node/vxlan.py` makes the kernel match.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address, ip_network

from net_manager.node.names import BRIDGE, PREFIX
from oakestra_net.addressing import NODE_SUBNET_V4_PREFIX, NODE_SUBNET_V6_PREFIX

DEVICE = f"{PREFIX}vx0"
VNI = 1
RULE_PRIORITY = 100  # our fwmark rules; a sweep deletes every rule with it on our bridge
OVERHEAD_V4 = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14


def port_of(tunnel_port: int) -> int:
    """The VXLAN port of a node whose raw tunnel listens on `tunnel_port` (the next one)."""
    if not 0 < tunnel_port < 65535:
        raise ValueError(f"tunnel port {tunnel_port!r} leaves no port for the VXLAN device")
    return tunnel_port + 1


def usable_node_ip(node_ip: str) -> bool:
    """Whether a node IP can be a tunnel end: an IPv4 unicast address (our underlay)."""
    try:
        address = ip_address(node_ip)
    except ValueError:
        return False
    return (
        isinstance(address, IPv4Address)
        and int(address) >> 24 != 0
        and not (address.is_multicast or address.is_loopback or address.is_reserved)
    )


def mac_of(node_ip: str) -> str:
    """02:00 (locally administered, unicast) followed by the four bytes of the node IP."""
    packed = IPv4Address(node_ip).packed
    return ":".join(f"{b:02x}" for b in (0x02, 0x00, *packed))


def mark_of(node_ip: str) -> int:
    """The fwmark (and route table) of a peer: its node IPv4 as a number."""
    return int(IPv4Address(node_ip))


def link_local_of(mac: str) -> str:
    """The EUI-64 link-local IPv6 address of a MAC (the peer's IPv6 gateway name)."""
    octets = bytes(int(part, 16) for part in mac.split(":"))
    eui64 = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return str(ip_address(b"\xfe\x80" + bytes(6) + eui64))


@dataclass(frozen=True, order=True)
class TunnelPeer:
    """One peer node: where its frames go, and which of its subnets we route to it."""

    node_ip: str
    subnets: tuple[str, ...] = ()  # its node subnets (v4 /26, v6 /120) the table knows

    @property
    def mac(self) -> str:
        return mac_of(self.node_ip)

    @property
    def mark(self) -> int:
        return mark_of(self.node_ip)

    @property
    def gateway_v6(self) -> str:
        return link_local_of(self.mac)


@dataclass(frozen=True)
class TunnelSpec:
    """The device and its peers; `mtu` is the device's (the underlay's minus overhead)."""

    local_ip: str
    port: int
    mtu: int
    peers: tuple[TunnelPeer, ...] = ()
    device: str = DEVICE
    bridge: str = BRIDGE
    vni: int = VNI

    @property
    def mac(self) -> str:
        return mac_of(self.local_ip)

    def routes(self) -> set[tuple[str, str, int]]:
        """(destination, gateway, table) of every route on the device: the peers'
        subnets in the main table, a default route per family in each peer's table."""
        wanted: set[tuple[str, str, int]] = set()
        for peer in self.peers:
            for subnet in peer.subnets:
                network = ip_network(subnet)
                gateway = peer.node_ip if network.version == 4 else peer.gateway_v6
                wanted.add((str(network), gateway, MAIN_TABLE))
            wanted.add(("0.0.0.0/0", peer.node_ip, peer.mark))
            wanted.add(("::/0", peer.gateway_v6, peer.mark))
        return wanted

    def neighbours(self) -> set[tuple[str, str]]:
        """(gateway address, MAC) of every permanent neighbour entry on the device."""
        return {
            pair
            for peer in self.peers
            for pair in ((peer.node_ip, peer.mac), (peer.gateway_v6, peer.mac))
        }

    def fdb(self) -> set[tuple[str, str]]:
        """(MAC, node IP) of every fdb entry of the device."""
        return {(peer.mac, peer.node_ip) for peer in self.peers}

    def rules(self) -> set[tuple[int, int]]:
        """(family 4 or 6, mark = table) of every fwmark rule."""
        return {(version, peer.mark) for peer in self.peers for version in (4, 6)}


MAIN_TABLE = 254


def sorted_subnets(subnets: Iterable[str]) -> tuple[str, ...]:
    """Subnets in one order (IPv4 first, by address), so equal sets make equal specs."""
    networks = sorted({ip_network(s) for s in subnets}, key=lambda n: (n.version, int(n[0])))
    return tuple(str(n) for n in networks)


def subnet_of(namespace_ip: str) -> str | None:
    """The node subnet (/26 or /120) holding a namespace IP, else None."""
    try:
        address = ip_address(namespace_ip)
    except ValueError:
        return None
    prefix = NODE_SUBNET_V4_PREFIX if address.version == 4 else NODE_SUBNET_V6_PREFIX
    return str(ip_network(f"{address}/{prefix}", strict=False))
