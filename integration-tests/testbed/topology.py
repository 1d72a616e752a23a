"""A namespace topology as data: nodes, their containers, the underlay, and derived names.

Like Mininet's Topo, this only describes: nodes on one underlay bridge (198.18.0.0/24,
the benchmarking range), each node with a bridge at subnet + 1 and its containers at
their namespace IPs. netns.py builds it. Every namespace name starts with the
topology's prefix (oakt-… tests, oakb-… benchmarks, oakr-… `make run`) so a sweep can
find leftovers, and every device name fits IFNAMSIZ (15 characters) and starts with
"oak". A node without a bridge (`bridge=False`) is only a leg on the underlay: the
infra namespace of the local cluster, or a worker whose net manager makes its own.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface, ip_interface, ip_network

UNDERLAY = "198.18.0.0/24"
TEST_PREFIX = "oakt-"
BENCH_PREFIX = "oakb-"
RUN_PREFIX = "oakr-"
PREFIXES = (TEST_PREFIX, BENCH_PREFIX, RUN_PREFIX)

# Device names (inside our own namespaces, so they may repeat across namespaces).
UNDERLAY_BRIDGE = "oakul0"
NODE_UPLINK = "oaketh0"  # a node's leg on the underlay
WORKER_UPLINK = "eth0"  # a local-cluster worker's leg (its net manager owns oak* there)
NODE_BRIDGE = "oakbr0"
CONTAINER_LINK = "oakc0"  # a container's interface
MTU = 1450  # what the net manager gives bridges and containers (reference §6.1)


@dataclass(frozen=True)
class Node:
    name: str  # short, e.g. "n1"
    underlay_ip: str  # e.g. 198.18.0.1
    subnet: str = ""  # e.g. 10.16.0.0/26; empty for a node without a bridge
    subnet_v6: str = ""  # e.g. fc00::/120
    bridge: bool = True  # False: the node gets only its underlay leg
    uplink: str = NODE_UPLINK  # the underlay leg's device name in the node's namespace

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
            if not node.bridge:
                raise ValueError(f"container {container.name}: node {node.name} has no bridge")
            for address, subnet in ((container.ip, node.subnet), (container.ip_v6, node.subnet_v6)):
                if ip_interface(address).ip not in ip_network(subnet):
                    raise ValueError(f"container {container.name}: {address} not in {subnet}")
        for node in self.nodes:
            if ip_interface(node.underlay_ip).ip not in ip_network(UNDERLAY):
                raise ValueError(f"node {node.name}: {node.underlay_ip} is not in {UNDERLAY}")
            if node.bridge and not (node.subnet and node.subnet_v6):
                raise ValueError(f"node {node.name}: a node with a bridge needs both subnets")
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


INFRA_IP = "198.18.0.254"


def local_cluster(prefix: str, workers: int = 2) -> Topology:
    """The local cluster's namespaces: "infra" (broker and managers) and workers w1, w2, …

    None has a bridge: each worker's net manager sets up its own, from the subnet the
    cluster hands out. Workers are 198.18.0.1, .2, …; infra is 198.18.0.254.
    """
    if not 1 <= workers <= 200:
        raise ValueError(f"a local cluster has 1-200 workers, not {workers}")
    nodes = [Node("infra", INFRA_IP, bridge=False)]
    # not "oak…": a net manager deletes every link of that prefix it does not own
    nodes += [
        Node(f"w{i}", f"198.18.0.{i}", bridge=False, uplink=WORKER_UPLINK)
        for i in range(1, workers + 1)
    ]
    return Topology(prefix, tuple(nodes))
