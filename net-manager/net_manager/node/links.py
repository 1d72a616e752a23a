"""Links of the node and its containers: the bridge, veth pairs, container interfaces.

Each `ensure_*` makes one piece of state exist, idempotently ("already exists" and "not
found" are success where that is the meaning); `delete_*` removes it.
"""

from __future__ import annotations

import os
import socket

from net_manager.node.base import KernelBase
from net_manager.node.errors import InterfaceNotFound, KernelError, NamespaceNotFound
from net_manager.node.names import CONTAINER_IFNAME, PREFIX
from net_manager.node.netlink import (
    IFA_F_TENTATIVE,
    MAIN_TABLE,
    RTN_UNICAST,
    Link,
    addresses_of,
    bridge_in,
    closing_iproute,
    ensure_default_route,
    ensure_hairpin,
    ensure_link_local,
    find_link,
    link_of,
    namespace_exists,
    netlink_errors,
    require_link,
    set_link,
    sync_addresses,
)
from net_manager.node.sysctls import write_sysctls
from net_manager.node.validate import (
    address_of,
    check_ifname,
    check_mtu,
    check_own_name,
    interface_of,
)


class LinkOps(KernelBase):
    """Links, addresses and routes of the node namespace and of containers."""

    def ensure_bridge(self, name: str, v4_cidr: str, v6_cidr: str | None, mtu: int) -> None:
        """Bridge `name` exists, is up, has `mtu` and exactly the given addresses."""
        check_own_name(name)
        check_mtu(mtu)
        wanted = [interface_of(v4_cidr, 4, f"address of {name}")]
        if v6_cidr is not None:
            wanted.append(interface_of(v6_cidr, 6, f"IPv6 address of {name}"))
        with self._lock:
            link = bridge_in(self._ipr, name, mtu, self.where)
            # Without DAD the bridge's link-local address is usable at once: the kernel
            # sends neighbour solicitations for forwarded IPv6 packets from it.
            dad_off = {f"net/ipv6/conf/{name}/accept_dad": "0"}
            write_sysctls(self.netns_path, dad_off, self.where)
            set_link(self._ipr, link, mtu=mtu, up=True)
            sync_addresses(self._ipr, link, wanted)
            if v6_cidr is not None:
                ensure_link_local(self._ipr, link)

    def ensure_veth(self, host_name: str, peer_name: str, bridge: str, mtu: int) -> None:
        """The pair exists; the host side is enslaved to `bridge`, up, with `mtu`, in
        hairpin mode (so the container reaches itself through a service IP)."""
        check_own_name(host_name)
        check_own_name(peer_name)
        check_mtu(mtu)
        with self._lock:
            bridge_link = require_link(self._ipr, bridge, f"cannot attach {host_name} to {bridge}")
            host = self._veth_link(host_name, peer_name, mtu)
            # A bridge port needs no IPv6 address of its own (no link-local, DAD, MLD).
            no_ipv6 = {f"net/ipv6/conf/{host_name}/disable_ipv6": "1"}
            write_sysctls(self.netns_path, no_ipv6, self.where)
            try:
                set_link(self._ipr, host, mtu=mtu, master=bridge_link.index, up=True)
                ensure_hairpin(self._ipr, require_link(self._ipr, host_name, f"{host_name}"))
            except KernelError as err:
                raise KernelError(f"cannot attach {host_name} to {bridge}: {err}") from None

    def _veth_link(self, host_name: str, peer_name: str, mtu: int) -> Link:
        """The host side of the veth pair, the pair created if missing."""
        host = find_link(self._ipr, host_name)
        if host is not None:
            if host.kind != "veth":
                raise KernelError(
                    f"{host_name} exists in {self.where} but is a {host.kind}, not a veth"
                )
            return host
        with netlink_errors(f"cannot create veth pair {host_name}/{peer_name} in {self.where}"):
            peer = {"ifname": peer_name, "mtu": mtu}
            self._ipr.link("add", ifname=host_name, kind="veth", mtu=mtu, peer=peer)
        return require_link(self._ipr, host_name, f"cannot create veth {host_name}")

    def move_into_container(
        self, peer_name: str, netns_path: str, new_name: str = CONTAINER_IFNAME
    ) -> None:
        """Move `peer_name` into the container namespace as `new_name` (done if it is there)."""
        check_ifname(new_name)
        self._check_not_node(netns_path)
        with closing_iproute(netns_path) as container:
            if find_link(container, new_name) is not None:
                return
        what = f"cannot move {peer_name} into {netns_path}"
        with self._lock:
            peer = require_link(self._ipr, peer_name, what)
            try:
                fd = os.open(netns_path, os.O_RDONLY)
            except OSError as err:
                raise NamespaceNotFound(f"{what}: {err.strerror}") from None
            try:
                with netlink_errors(what):
                    self._ipr.link("set", index=peer.index, net_ns_fd=fd, ifname=new_name)
            finally:
                os.close(fd)

    def configure_container(
        self,
        netns_path: str,
        ifname: str,
        v4_cidr: str,
        v6_cidr: str | None,
        gw_v4: str,
        gw_v6: str | None,
        mtu: int,
    ) -> None:
        """Inside the container: lo up, DAD off, addresses, `ifname` up, default routes."""
        check_mtu(mtu)
        wanted = [interface_of(v4_cidr, 4, f"address of {ifname}")]
        gateways = [address_of(gw_v4, 4, "IPv4 gateway")]
        if v6_cidr is not None:
            wanted.append(interface_of(v6_cidr, 6, f"IPv6 address of {ifname}"))
            gateways.append(address_of(gw_v6, 6, "IPv6 gateway"))
        what = f"cannot configure {ifname} in {netns_path}"
        self._check_not_node(netns_path)
        with closing_iproute(netns_path) as ipr:
            set_link(ipr, require_link(ipr, "lo", what), up=True)
            link = require_link(ipr, ifname, what)
            if v6_cidr is not None:
                dad_off = {"net/ipv6/conf/default/accept_dad": "0"}
                dad_off[f"net/ipv6/conf/{ifname}/accept_dad"] = "0"
                write_sysctls(netns_path, dad_off, f"container {netns_path}")
            set_link(ipr, link, mtu=mtu)
            sync_addresses(ipr, link, wanted)
            set_link(ipr, link, up=True)
            for gateway in gateways:
                ensure_default_route(ipr, link, gateway)

    def container_state(self, netns_path: str, ifname: str = CONTAINER_IFNAME) -> dict:
        """What `ifname` inside the container looks like: addresses, routes, mtu, up."""
        with closing_iproute(netns_path) as ipr:
            link = require_link(ipr, ifname, f"cannot read {ifname} in {netns_path}")
            addresses = addresses_of(ipr, link)
            routes = []
            for msg in ipr.get_routes():
                if msg.get_attr("RTA_TABLE") != MAIN_TABLE or msg.get_attr("RTA_OIF") != link.index:
                    continue
                any_dst = "0.0.0.0" if msg["family"] == socket.AF_INET else "::"
                dst = msg.get_attr("RTA_DST") or any_dst
                routes.append(
                    {"dst": f"{dst}/{msg['dst_len']}", "gateway": msg.get_attr("RTA_GATEWAY")}
                )
        return {
            "ifname": ifname,
            "up": link.up,
            "mtu": link.mtu,
            "addresses": sorted(str(iface) for iface in addresses),
            "tentative": sorted(
                str(i) for i, flags in addresses.items() if flags & IFA_F_TENTATIVE
            ),
            "routes": sorted(routes, key=lambda route: (route["dst"], str(route["gateway"]))),
        }

    def namespace_exists(self, netns_path: str) -> bool:
        return namespace_exists(netns_path)

    def delete_link(self, name: str) -> None:
        """Delete link `name` in the node namespace; a missing link is fine."""
        with self._lock:
            link = find_link(self._ipr, name)
            if link is None:
                return
            try:
                with netlink_errors(f"cannot delete {name} in {self.where}"):
                    self._ipr.link("del", index=link.index)
            except InterfaceNotFound:
                return

    def list_links(self, prefix: str = PREFIX) -> list[str]:
        """Names of the node namespace's links that start with `prefix`."""
        with self._lock, netlink_errors(f"cannot list links in {self.where}"):
            names = [msg.get_attr("IFLA_IFNAME") for msg in self._ipr.get_links()]
        return sorted(name for name in names if name.startswith(prefix))

    def link_exists(self, name: str) -> bool:
        with self._lock:
            return find_link(self._ipr, name) is not None

    def default_route_address(self, interface: str | None = None) -> str:
        """First IPv4 address of `interface`, or of the default-route interface; sends nothing."""
        with self._lock, netlink_errors(f"cannot read addresses in {self.where}"):
            if interface is not None:
                link = require_link(self._ipr, interface, "cannot find the node address")
            else:
                link = self._default_route_link()
            primaries = [
                msg.get_attr("IFA_ADDRESS")
                for msg in self._ipr.get_addr(family=socket.AF_INET, index=link.index)
                if not (msg["flags"] & 0x01)  # IFA_F_SECONDARY
            ]
        if not primaries:
            raise KernelError(f"interface {link.name} has no IPv4 address in {self.where}")
        return primaries[0]

    def _default_route_link(self) -> Link:
        defaults = [
            msg
            for msg in self._ipr.get_routes(family=socket.AF_INET)
            if msg["dst_len"] == 0
            and msg.get_attr("RTA_TABLE") == MAIN_TABLE
            and msg["type"] == RTN_UNICAST
        ]
        if not defaults:
            raise KernelError(
                f"no IPv4 default route in {self.where} and no interface configured: "
                "set the node's default interface"
            )
        # The kernel uses the route with the lowest metric; so do we.
        best = min(defaults, key=lambda msg: msg.get_attr("RTA_PRIORITY") or 0)
        oif = best.get_attr("RTA_OIF")
        if oif is None:
            hops = best.get_attr("RTA_MULTIPATH") or []
            oif = hops[0]["oif"] if hops else None
        links = [msg for msg in self._ipr.get_links() if msg["index"] == oif]
        if not links:
            raise KernelError(f"the default route in {self.where} has no output interface")
        return link_of(links[0])
