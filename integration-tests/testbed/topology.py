"""A namespace topology as data: nodes, their containers, the underlay, and derived names.

Like Mininet's Topo, this only describes: nodes on one underlay bridge (198.18.0.0/24,
the benchmarking range), each node with a bridge at subnet + 1 and its containers at
their namespace IPs. netns.py builds it. Every namespace name starts with the
topology's prefix (oakt-… tests, oakb-… benchmarks) so a sweep can find leftovers, and
every device name fits IFNAMSIZ (15 characters) and starts with "oak".
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface, ip_interface, ip_network

UNDERLAY = "198.18.0.0/24"
TEST_PREFIX = "oakt-"
BENCH_PREFIX = "oakb-"
PREFIXES = (TEST_PREFIX, BENCH_PREFIX)

# Device names (inside our own namespaces, so they may repeat across namespaces).
UNDERLAY_BRIDGE = "oakul0"
NODE_UPLINK = "oaketh0"  # a node's leg on the underlay
NODE_BRIDGE = "oakbr0"
CONTAINER_LINK = "oakc0"  # a container's interface
MTU = 1450  # what the net manager gives bridges and containers (reference §6.1)


@dataclass(frozen=True)
class Node:
    name: str  # short, e.g. "n1"
    underlay_ip: str  # e.g. 198.18.0.1
    subnet: str  # e.g. 10.16.0.0/26
    subnet_v6: str  # e.g. fc00::/120

    @property
    def bridge_ip(self) -> IPv4Interface:
        network = ip_network(self.subnet)
        return IPv4Interface(f"{network.network_address + 1}/{network.prefixlen}")

    @property
    def bridge_ip_v6(self) -> IPv6Interface:
        network = ip_network(self.subnet_v6)
        return IPv6Interface(f"{network.network_address + 1}/{network.prefixlen}")


@dataclass(frozen=True)
class Container:
    name: str  # short, e.g. "c1"
    node: str  # the node's name
    ip: str  # namespace IP
    ip_v6: str


@dataclass(frozen=True)
class Topology:
    prefix: str  # e.g. "oakt-1a2b-": every namespace name starts with it
    nodes: tuple[Node, ...]
    containers: tuple[Container, ...] = ()

    def __post_init__(self) -> None:
        if not self.prefix.startswith(PREFIXES):
            raise ValueError(f"topology prefix {self.prefix!r} must start with one of {PREFIXES}")
        names = [n.name for n in self.nodes] + [c.name for c in self.containers]
        if len(set(names)) != len(names) or "ul" in names:
            raise ValueError(f"topology names must be unique and not 'ul': {names}")
        for container in self.containers:
            node = self.node(container.node)
            for address, subnet in ((container.ip, node.subnet), (container.ip_v6, node.subnet_v6)):
                if ip_interface(address).ip not in ip_network(subnet):
                    raise ValueError(f"container {container.name}: {address} not in {subnet}")
        for node in self.nodes:
            if ip_interface(node.underlay_ip).ip not in ip_network(UNDERLAY):
                raise ValueError(f"node {node.name}: {node.underlay_ip} is not in {UNDERLAY}")
        ports = [self.uplink_peer(n) for n in self.nodes]
        ports += [self.container_port(c) for c in self.containers]
        if any(len(port) > 15 for port in ports):
            raise ValueError(f"names too long for device names (15 characters): {ports}")

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"topology has no node {name!r}")

    def container(self, name: str) -> Container:
        for container in self.containers:
            if container.name == name:
                return container
        raise KeyError(f"topology has no container {name!r}")

    def containers_of(self, node: str) -> list[Container]:
        return [c for c in self.containers if c.node == node]

    def netns(self, name: str) -> str:
        """The namespace of a node, a container, or "ul" (the underlay)."""
        if name != "ul" and name not in {n.name for n in self.nodes} | {
            c.name for c in self.containers
        }:
            raise KeyError(f"topology has no node or container {name!r}")
        return f"{self.prefix}{name}"

    @property
    def namespaces(self) -> list[str]:
        return [self.netns(x) for x in ["ul", *(n.name for n in self.nodes)]] + [
            self.netns(c.name) for c in self.containers
        ]

    @staticmethod
    def uplink_peer(node: Node) -> str:
        """The underlay bridge's port for a node."""
        return f"oakul-{node.name}"

    @staticmethod
    def container_port(container: Container) -> str:
        """The node bridge's port for a container."""
        return f"oakv-{container.name}"


def unique_prefix(kind: str = TEST_PREFIX) -> str:
    """A fresh prefix for one run, e.g. oakt-1a2b-."""
    return f"{kind}{secrets.token_hex(2)}-"


def two_nodes(prefix: str, *, extra_container_on_n1: bool = False) -> Topology:
    """The standard testbed: nodes n1, n2 with one container each (c1 on n1, c2 on n2).

    With extra_container_on_n1, c3 sits beside c1 (local delivery).
    """
    n1 = Node("n1", "198.18.0.1", "10.16.0.0/26", "fc00::/120")
    n2 = Node("n2", "198.18.0.2", "10.16.0.64/26", "fc00::100/120")
    containers = [Container("c1", "n1", "10.16.0.2", "fc00::2")]
    containers.append(Container("c2", "n2", "10.16.0.66", "fc00::102"))
    if extra_container_on_n1:
        containers.append(Container("c3", "n1", "10.16.0.3", "fc00::3"))
    return Topology(prefix, (n1, n2), tuple(containers))
