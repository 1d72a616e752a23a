"""The kernel of one node namespace, as the reconciler and the daemon use it.

`Kernel` is the real one: it works on the namespace the process runs in (production:
the node's) or on a named/pathed namespace given at construction (tests), and is made
of one group of operations per job (links, firewall, named namespaces, unikernel
wiring; see the `node` package). `KernelApi` is the interface the rest of the net
manager relies on; the fake kernel of the tests satisfies it too (checked by mypy).

Every operation is idempotent: `ensure_*` makes one piece of state exist, `delete_*`
makes it not exist ("already exists" and "not found" are success where that is the
meaning). What the state should be, and when to fix it, is the reconciler's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from net_manager.node.errors import InterfaceNotFound, KernelError, NamespaceNotFound
from net_manager.node.firewall import unikernel_nat_rules
from net_manager.node.iptables import FirewallOps
from net_manager.node.links import LinkOps
from net_manager.node.names import BRIDGE, CONTAINER_IFNAME, NETNS_RUN_DIR, PREFIX, TUN
from net_manager.node.namespaces import NamespaceOps
from net_manager.node.netlink import namespace_exists, netns_path_of_pid
from net_manager.node.portmap import PortMapping
from net_manager.node.sysctls import NODE_SYSCTLS, write_sysctls
from net_manager.node.tunnel import TunnelSpec
from net_manager.node.unikernel import UnikernelOps
from net_manager.node.vxlan import TunnelOps

__all__ = [
    "BRIDGE",
    "CONTAINER_IFNAME",
    "NETNS_RUN_DIR",
    "PREFIX",
    "TUN",
    "InterfaceNotFound",
    "Kernel",
    "KernelApi",
    "KernelError",
    "NamespaceNotFound",
    "namespace_exists",
    "netns_path_of_pid",
    "unikernel_nat_rules",
]


class Kernel(LinkOps, NamespaceOps, UnikernelOps, FirewallOps, TunnelOps):
    """Kernel state of one node namespace (None: the current one) and its containers."""

    def ensure_sysctls(self) -> None:
        """Forwarding on (v4 and v6), reverse-path filtering off, in the node namespace."""
        write_sysctls(self.netns_path, NODE_SYSCTLS, self.where)


class KernelApi(Protocol):
    """What the reconciler, the daemon and the CLI need from a node's kernel."""

    def ensure_sysctls(self) -> None: ...

    def ensure_bridge(self, name: str, v4_cidr: str, v6_cidr: str | None, mtu: int) -> None: ...

    def ensure_base_rules(
        self, bridge: str, tun: str, subnet_v4: str, subnet_v6: str | None
    ) -> None: ...

    def ensure_veth(self, host_name: str, peer_name: str, bridge: str, mtu: int) -> None: ...

    def move_into_container(
        self, peer_name: str, netns_path: str, new_name: str = CONTAINER_IFNAME
    ) -> None: ...

    def configure_container(
        self,
        netns_path: str,
        ifname: str,
        v4_cidr: str,
        v6_cidr: str | None,
        gw_v4: str,
        gw_v6: str | None,
        mtu: int,
    ) -> None: ...

    def ensure_port_mapping(
        self, mapping: Any, namespace_ip: str, namespace_ip_v6: str | None = None
    ) -> None: ...

    def delete_port_mapping(
        self, mapping: Any, namespace_ip: str, namespace_ip_v6: str | None = None
    ) -> None: ...

    def list_port_mappings(self) -> Sequence[tuple[str, PortMapping]]: ...

    def delete_link(self, name: str) -> None: ...

    def list_links(self, prefix: str = PREFIX) -> list[str]: ...

    def namespace_exists(self, netns_path: str) -> bool: ...

    def is_node_namespace(self, netns_path: str) -> bool: ...

    def named_netns_path(self, name: str) -> str: ...

    def ensure_named_netns(self, name: str) -> str: ...

    def delete_named_netns(self, name: str) -> bool: ...

    def list_named_netns(self) -> list[str]: ...

    def configure_unikernel_inner(
        self,
        netns_path: str,
        uplink: str,
        namespace_ip: str,
        namespace_ip_v6: str | None,
        mtu: int,
    ) -> None: ...

    def default_route_address(self, interface: str | None = None) -> str: ...

    def ensure_tunnel(self, spec: TunnelSpec) -> None: ...

    def delete_tunnel(self, device: str = ..., bridge: str | None = None) -> None: ...

    def close(self) -> None: ...
