"""The only module that touches the kernel: links, addresses, routes, sysctls, iptables.

Each public method makes one piece of kernel state exist (`ensure_*`) or not exist
(`delete_*`) and is idempotent: "already exists" and "not found" are success where
that is the meaning, and state that is already right is not rewritten. Netlink errors
become `KernelError`, `InterfaceNotFound` or `NamespaceNotFound`, whose messages name
the object. A `Kernel` works on the namespace the process runs in (production: the
node's) or on a named/pathed namespace given at construction (tests); it never
switches the namespace of a daemon thread: pyroute2 opens netlink sockets for other
namespaces in a helper process, and iptables and sysctl writes run under `nsenter`.

Firewall rules live in our own chains (filter OAK-FORWARD, nat OAKESTRA for port
mappings, nat OAK-POSTROUTING), each jumped to once from the built-in chain; the rule
text is built and parsed by the pure functions at the bottom. What the state should be
and when to fix it is left to the reconciler.

Unikernels get a named namespace (/run/netns/<name>, for `ip netns exec`) that the net
manager creates and marks as its own by the alias of its loopback device (`NETNS_MARK`,
plus the node namespace's name when the Kernel works on one), so only namespaces this
node created are ever deleted. Inside: bridge virbr0 with TAP tap0 for the guest and a
nat table sending everything addressed to the namespace IP to the guest.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import shlex
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from net_manager.portmap import PortMapping

PREFIX = "oak-"
BRIDGE = "oak-br0"
TUN = "oak-tun0"
CONTAINER_IFNAME = "eth0"
IFNAMSIZ = 15
NETNS_RUN_DIR = "/run/netns"
PLATFORM_V4 = "10.16.0.0/12"
PLATFORM_V6 = "fc00::/7"

FILTER_CHAIN = "OAK-FORWARD"
NAT_CHAIN = "OAKESTRA"  # upstream's name for the port-mapping chain
POSTROUTING_CHAIN = "OAK-POSTROUTING"
OWN_CHAINS = {"filter": (FILTER_CHAIN,), "nat": (NAT_CHAIN, POSTROUTING_CHAIN)}
COMMENT_PREFIX = "oak:"
IPTABLES = {4: "iptables", 6: "ip6tables"}
COMMAND_TIMEOUT = 30.0

# Inside a unikernel's namespace (upstream's layout; the node engine relies on the
# names): the guest behind tap0 has .2 and uses .1 on virbr0 as its gateway.
UNIKERNEL_BRIDGE = "virbr0"
UNIKERNEL_TAP = "tap0"
UNIKERNEL_GATEWAY = "192.168.1.1/30"
UNIKERNEL_GUEST = "192.168.1.2"
UNIKERNEL_GATEWAY_V6 = "fd00:1::1/126"
UNIKERNEL_GUEST_V6 = "fd00:1::2"
NETNS_MARK = "oakestra-net"  # alias of `lo` in the named namespaces we create
_NETNS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_NAT_BUILTINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")

NODE_SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/ipv6/conf/all/forwarding": "1",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
}
_IFF_UP = 0x1
_IFA_F_NODAD = 0x02
_IFA_F_TENTATIVE = 0x40
_MAIN_TABLE = 254
_PLAIN_ARG = re.compile(r"[A-Za-z0-9_@%+=:,./!\[\]-]+")
_RTN_UNICAST = 1
# Writes each key=value under /proc/sys unless it already holds that value.
_SYSCTL_SCRIPT = (
    'for kv; do k="/proc/sys/${kv%%=*}"; v="${kv#*=}"; '
    '[ "$(cat "$k")" = "$v" ] || echo "$v" > "$k" || exit 1; done'
)


class KernelError(Exception):
    """A kernel operation failed; the message names the object and the reason."""


class InterfaceNotFound(KernelError):
    """A network interface the operation needs does not exist."""


class NamespaceNotFound(KernelError):
    """A network namespace does not exist (any more)."""


@dataclass(frozen=True)
class _Link:
    index: int
    name: str
    mtu: int
    up: bool
    master: int | None
    kind: str | None
    mac: str | None


def namespace_exists(netns_path: str) -> bool:
    """True if `netns_path` (e.g. /proc/<pid>/ns/net) names a live namespace."""
    try:
        os.stat(netns_path)
    except OSError:
        return False
    return True


def netns_path_of_pid(pid: int) -> str:
    """The namespace file of process `pid`; NamespaceNotFound if the process is gone."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"pid must be a positive integer, got {pid!r}")
    path = f"/proc/{pid}/ns/net"
    if not namespace_exists(path):
        raise NamespaceNotFound(f"network namespace of process {pid} is gone")
    return path


def _netns_file(netns: str) -> str:
    if not isinstance(netns, str) or not netns:
        raise ValueError(f"netns must be a namespace name or path, got {netns!r}")
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


@contextmanager
def _netlink(what: str) -> Iterator[None]:
    """Turn netlink errors into named exceptions whose message starts with `what`."""
    try:
        yield
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            raise InterfaceNotFound(f"{what}: no such interface") from None
        raise KernelError(f"{what}: {os.strerror(err.code)}") from None
    except OSError as err:
        raise KernelError(f"{what}: {err}") from None


def _open_iproute(netns_path: str | None) -> IPRoute:
    if netns_path is None:
        return IPRoute(groups=0)  # groups=0: no event subscriptions piling up unread
    if not namespace_exists(netns_path):
        raise NamespaceNotFound(f"network namespace {netns_path} not found")
    try:
        # flags=0: never create the namespace
        return IPRoute(netns=netns_path, flags=0, groups=0)
    except OSError as err:
        raise NamespaceNotFound(f"cannot enter network namespace {netns_path}: {err}") from None


def _link_of(msg: Any) -> _Link:
    return _Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        mtu=msg.get_attr("IFLA_MTU"),
        up=bool(msg["flags"] & _IFF_UP),
        master=msg.get_attr("IFLA_MASTER"),
        kind=msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
        mac=msg.get_attr("IFLA_ADDRESS"),
    )


def _find(ipr: IPRoute, name: str) -> _Link | None:
    try:
        msgs = ipr.link("get", ifname=name)
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return None
        raise KernelError(f"cannot look up interface {name}: {os.strerror(err.code)}") from None
    return _link_of(msgs[0])


def _require(ipr: IPRoute, name: str, what: str) -> _Link:
    link = _find(ipr, name)
    if link is None:
        raise InterfaceNotFound(f"{what}: interface {name} does not exist")
    return link


def _set_link(
    ipr: IPRoute, link: _Link, *, mtu: int | None = None, master: int | None = None, up=False
) -> None:
    """Change only what differs, so a second call sends nothing."""
    changes: dict[str, Any] = {}
    if mtu is not None and link.mtu != mtu:
        changes["mtu"] = mtu
    if master is not None and link.master != master:
        changes["master"] = master
    if up and not link.up:
        changes["state"] = "up"
    if changes:
        with _netlink(f"cannot configure {link.name} ({', '.join(changes)})"):
            ipr.link("set", index=link.index, **changes)


def _addresses(ipr: IPRoute, link: _Link) -> dict[Any, int]:
    """Addresses on `link` (link-local ones left out) mapped to their IFA flags."""
    found = {}
    for msg in ipr.get_addr(index=link.index):
        iface = ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
        if not iface.ip.is_link_local:
            found[iface] = msg.get_attr("IFA_FLAGS") or msg["flags"]
    return found


def _sync_addresses(ipr: IPRoute, link: _Link, wanted: Sequence[Any]) -> None:
    """Make the non-link-local addresses of `link` exactly `wanted`."""
    current = set(_addresses(ipr, link))
    # Remove first: deleting an IPv4 primary also deletes secondaries added after it.
    for extra in sorted(current - set(wanted), key=str):
        with _netlink(f"cannot remove {extra} from {link.name}"):
            ipr.addr(
                "del", index=link.index, address=str(extra.ip), prefixlen=extra.network.prefixlen
            )
    for missing in [iface for iface in wanted if iface not in current]:
        flags = {"flags": _IFA_F_NODAD} if missing.version == 6 else {}
        try:
            ipr.addr(
                "add",
                index=link.index,
                address=str(missing.ip),
                prefixlen=missing.network.prefixlen,
                **flags,
            )
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                what = f"cannot add {missing} to {link.name}"
                raise KernelError(f"{what}: {os.strerror(err.code)}") from None


def _ensure_link_local(ipr: IPRoute, link: _Link) -> None:
    """Put back the EUI-64 link-local address if someone flushed it: the kernel only makes
    one when the link comes up, and IPv6 neighbour discovery for forwarded packets needs it.
    """
    for msg in ipr.get_addr(family=socket.AF_INET6, index=link.index):
        if ipaddress.ip_address(msg.get_attr("IFA_ADDRESS")).is_link_local:
            return
    if not link.mac:
        return
    address = eui64_link_local(link.mac)
    try:
        ipr.addr("add", index=link.index, address=address, prefixlen=64)
    except NetlinkError as err:
        if err.code != errno.EEXIST:
            what = f"cannot add link-local {address} to {link.name}"
            raise KernelError(f"{what}: {os.strerror(err.code)}") from None


def eui64_link_local(mac: str) -> str:
    """The fe80::/64 address the kernel derives from a MAC address (RFC 4291, EUI-64)."""
    octets = bytes.fromhex(mac.replace(":", ""))
    if len(octets) != 6:
        raise ValueError(f"invalid MAC address {mac!r}")
    eui64 = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui64))


def _ensure_default_route(ipr: IPRoute, link: _Link, gateway: Any) -> None:
    family = socket.AF_INET if gateway.version == 4 else socket.AF_INET6
    defaults = [
        msg
        for msg in ipr.get_routes(family=family)
        if msg["dst_len"] == 0
        and msg.get_attr("RTA_TABLE") == _MAIN_TABLE
        and msg["type"] == _RTN_UNICAST
    ]
    if len(defaults) == 1:
        only = defaults[0]
        if only.get_attr("RTA_GATEWAY") == str(gateway) and only.get_attr("RTA_OIF") == link.index:
            return
    dst = "0.0.0.0/0" if gateway.version == 4 else "::/0"
    with _netlink(f"cannot set default route via {gateway} on {link.name}"):
        for extra in defaults[1:]:
            ipr.route("del", **_route_key(extra))
        ipr.route("replace", dst=dst, gateway=str(gateway), oif=link.index, family=family)


def _route_key(msg: Any) -> dict[str, Any]:
    key = {"family": msg["family"], "dst_len": 0, "table": _MAIN_TABLE}
    if msg.get_attr("RTA_PRIORITY") is not None:
        key["priority"] = msg.get_attr("RTA_PRIORITY")
    return key


class Kernel:
    """Kernel state of one node namespace (None: the current one) and its containers."""

    def __init__(self, netns: str | None = None, *, named_netns_prefix: str = "") -> None:
        """`named_netns_prefix` goes in front of the named namespaces this Kernel creates
        (tests: "oakt-…-"; production: none, the node engine expects the bare name)."""
        if named_netns_prefix and not _NETNS_NAME.fullmatch(named_netns_prefix):
            raise ValueError(f"invalid named namespace prefix {named_netns_prefix!r}")
        self.netns = netns
        self.netns_path = None if netns is None else _netns_file(netns)
        self.where = "the current namespace" if netns is None else f"namespace {netns}"
        self.named_netns_prefix = named_netns_prefix
        self.netns_mark = NETNS_MARK if netns is None else f"{NETNS_MARK} {netns}"
        self._lock = threading.RLock()
        self._ipr = _open_iproute(self.netns_path)

    def close(self) -> None:
        with self._lock:
            self._ipr.close()

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- node level -------------------------------------------------------------

    def ensure_sysctls(self) -> None:
        """Forwarding on (v4 and v6), reverse-path filtering off, in the node namespace."""
        _write_sysctls(self.netns_path, NODE_SYSCTLS, self.where)

    def ensure_bridge(self, name: str, v4_cidr: str, v6_cidr: str | None, mtu: int) -> None:
        """Bridge `name` exists, is up, has `mtu` and exactly the given addresses."""
        _check_own_name(name)
        _check_mtu(mtu)
        wanted = [_interface(v4_cidr, 4, f"address of {name}")]
        if v6_cidr is not None:
            wanted.append(_interface(v6_cidr, 6, f"IPv6 address of {name}"))
        with self._lock:
            link = self._bridge_link(name, mtu)
            # Without DAD the bridge's link-local address is usable at once: the kernel
            # sends neighbour solicitations for forwarded IPv6 packets from it.
            dad_off = {f"net/ipv6/conf/{name}/accept_dad": "0"}
            _write_sysctls(self.netns_path, dad_off, self.where)
            _set_link(self._ipr, link, mtu=mtu, up=True)
            _sync_addresses(self._ipr, link, wanted)
            if v6_cidr is not None:
                _ensure_link_local(self._ipr, link)

    def _bridge_link(self, name: str, mtu: int) -> _Link:
        """The bridge `name`, created if missing."""
        return _bridge_in(self._ipr, name, mtu, self.where)

    def ensure_base_rules(
        self,
        bridge: str,
        tun: str,
        subnet_v4: str,
        subnet_v6: str | None,
        platform_v4: str = PLATFORM_V4,
        platform_v6: str = PLATFORM_V6,
    ) -> None:
        """Our chains hold exactly their rules and each is jumped to once (v4 and v6)."""
        _check_ifname(bridge)
        _check_ifname(tun)
        families = [(4, subnet_v4, platform_v4)]
        if subnet_v6 is not None:
            families.append((6, subnet_v6, platform_v6))
        for family, subnet, platform in families:
            plan = base_rule_plan(family, bridge, tun, subnet, platform)
            with self._lock:
                self._apply_plan(family, plan)

    def delete_base_rules(self) -> None:
        """Remove our jumps and chains (port mappings included) in iptables and ip6tables."""
        with self._lock:
            for family in IPTABLES:
                for table, chains in OWN_CHAINS.items():
                    listing = self._list_table(family, table)
                    commands = [_as_delete(line) for line in _jumps_to(listing, chains)]
                    for chain in chains:
                        if chain in _chains_in(listing):
                            commands += [f"-F {chain}", f"-X {chain}"]
                    self._restore(family, {table: commands})

    # ---- containers -------------------------------------------------------------

    def ensure_veth(self, host_name: str, peer_name: str, bridge: str, mtu: int) -> None:
        """The pair exists; the host side is enslaved to `bridge`, up, with `mtu`."""
        _check_own_name(host_name)
        _check_own_name(peer_name)
        _check_mtu(mtu)
        with self._lock:
            bridge_link = _require(self._ipr, bridge, f"cannot attach {host_name} to {bridge}")
            host = self._veth_link(host_name, peer_name, mtu)
            # A bridge port needs no IPv6 address of its own (no link-local, DAD, MLD).
            no_ipv6 = {f"net/ipv6/conf/{host_name}/disable_ipv6": "1"}
            _write_sysctls(self.netns_path, no_ipv6, self.where)
            try:
                _set_link(self._ipr, host, mtu=mtu, master=bridge_link.index, up=True)
            except KernelError as err:
                raise KernelError(f"cannot attach {host_name} to {bridge}: {err}") from None

    def _veth_link(self, host_name: str, peer_name: str, mtu: int) -> _Link:
        """The host side of the veth pair, the pair created if missing."""
        host = _find(self._ipr, host_name)
        if host is not None:
            if host.kind != "veth":
                raise KernelError(
                    f"{host_name} exists in {self.where} but is a {host.kind}, not a veth"
                )
            return host
        with _netlink(f"cannot create veth pair {host_name}/{peer_name} in {self.where}"):
            peer = {"ifname": peer_name, "mtu": mtu}
            self._ipr.link("add", ifname=host_name, kind="veth", mtu=mtu, peer=peer)
        return _require(self._ipr, host_name, f"cannot create veth {host_name}")

    def move_into_container(
        self, peer_name: str, netns_path: str, new_name: str = CONTAINER_IFNAME
    ) -> None:
        """Move `peer_name` into the container namespace as `new_name` (done if it is there)."""
        _check_ifname(new_name)
        self._check_not_node(netns_path)
        with closing_iproute(netns_path) as container:
            if _find(container, new_name) is not None:
                return
        what = f"cannot move {peer_name} into {netns_path}"
        with self._lock:
            peer = _require(self._ipr, peer_name, what)
            try:
                fd = os.open(netns_path, os.O_RDONLY)
            except OSError as err:
                raise NamespaceNotFound(f"{what}: {err.strerror}") from None
            try:
                with _netlink(what):
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
        _check_mtu(mtu)
        wanted = [_interface(v4_cidr, 4, f"address of {ifname}")]
        gateways = [_address(gw_v4, 4, "IPv4 gateway")]
        if v6_cidr is not None:
            wanted.append(_interface(v6_cidr, 6, f"IPv6 address of {ifname}"))
            gateways.append(_address(gw_v6, 6, "IPv6 gateway"))
        what = f"cannot configure {ifname} in {netns_path}"
        self._check_not_node(netns_path)
        with closing_iproute(netns_path) as ipr:
            _set_link(ipr, _require(ipr, "lo", what), up=True)
            link = _require(ipr, ifname, what)
            if v6_cidr is not None:
                dad_off = {"net/ipv6/conf/default/accept_dad": "0"}
                dad_off[f"net/ipv6/conf/{ifname}/accept_dad"] = "0"
                _write_sysctls(netns_path, dad_off, f"container {netns_path}")
            _set_link(ipr, link, mtu=mtu)
            _sync_addresses(ipr, link, wanted)
            _set_link(ipr, link, up=True)
            for gateway in gateways:
                _ensure_default_route(ipr, link, gateway)

    def _check_not_node(self, netns_path: str) -> None:
        """Refuse a "container" that shares the node's namespace (host networking): its
        configuration would replace the node's own default route."""
        node = self.netns_path or "/proc/self/ns/net"
        try:
            same = _same_file(netns_path, node)
        except OSError:
            raise NamespaceNotFound(f"network namespace {netns_path} not found") from None
        if same:
            raise KernelError(
                f"{netns_path} is the node's own network namespace (host networking?): "
                "refusing to configure it as a container"
            )

    def container_state(self, netns_path: str, ifname: str = CONTAINER_IFNAME) -> dict:
        """What `ifname` inside the container looks like: addresses, routes, mtu, up."""
        with closing_iproute(netns_path) as ipr:
            link = _require(ipr, ifname, f"cannot read {ifname} in {netns_path}")
            addresses = _addresses(ipr, link)
            routes = []
            for msg in ipr.get_routes():
                if (
                    msg.get_attr("RTA_TABLE") != _MAIN_TABLE
                    or msg.get_attr("RTA_OIF") != link.index
                ):
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
                str(i) for i, flags in addresses.items() if flags & _IFA_F_TENTATIVE
            ),
            "routes": sorted(routes, key=lambda route: (route["dst"], str(route["gateway"]))),
        }

    def namespace_exists(self, netns_path: str) -> bool:
        return namespace_exists(netns_path)

    def delete_link(self, name: str) -> None:
        """Delete link `name` in the node namespace; a missing link is fine."""
        with self._lock:
            link = _find(self._ipr, name)
            if link is None:
                return
            try:
                with _netlink(f"cannot delete {name} in {self.where}"):
                    self._ipr.link("del", index=link.index)
            except InterfaceNotFound:
                return

    def list_links(self, prefix: str = PREFIX) -> list[str]:
        """Names of the node namespace's links that start with `prefix`."""
        with self._lock, _netlink(f"cannot list links in {self.where}"):
            names = [msg.get_attr("IFLA_IFNAME") for msg in self._ipr.get_links()]
        return sorted(name for name in names if name.startswith(prefix))

    def link_exists(self, name: str) -> bool:
        with self._lock:
            return _find(self._ipr, name) is not None

    def default_route_address(self, interface: str | None = None) -> str:
        """First IPv4 address of `interface`, or of the default-route interface; sends nothing."""
        with self._lock, _netlink(f"cannot read addresses in {self.where}"):
            if interface is not None:
                link = _require(self._ipr, interface, "cannot find the node address")
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

    def _default_route_link(self) -> _Link:
        defaults = [
            msg
            for msg in self._ipr.get_routes(family=socket.AF_INET)
            if msg["dst_len"] == 0
            and msg.get_attr("RTA_TABLE") == _MAIN_TABLE
            and msg["type"] == _RTN_UNICAST
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
        return _link_of(links[0])

    # ---- unikernels -------------------------------------------------------------

    def named_netns_path(self, name: str) -> str:
        """The file of the named namespace `name`: /run/netns/<prefix><name>."""
        return os.path.join(NETNS_RUN_DIR, self._full_netns_name(name))

    def _full_netns_name(self, name: object) -> str:
        if not isinstance(name, str) or not _NETNS_NAME.fullmatch(name):
            raise ValueError(
                f"invalid namespace name {name!r} (letters, digits, '_', '.', '-'; "
                "at most 200 characters)"
            )
        return self.named_netns_prefix + name

    def ensure_named_netns(self, name: str) -> str:
        """The named namespace `name` exists, created and marked by us; its path.

        One of that name we did not create is not taken over: KernelError.
        """
        full = self._full_netns_name(name)
        path = os.path.join(NETNS_RUN_DIR, full)
        with self._lock:
            if namespace_exists(path):
                if not _is_marked(path, self.netns_mark):
                    raise KernelError(
                        f"network namespace {full} exists but was not created by this net "
                        "manager: delete it (ip netns delete) or undeploy its user first"
                    )
                return path
            self._run(["ip", "netns", "add", full])
            try:
                _mark_netns(path, self.netns_mark)
            except KernelError:
                self._run(["ip", "netns", "delete", full], check=False)
                raise
        return path

    def delete_named_netns(self, name: str) -> bool:
        """Delete the named namespace `name` if we created it; True if it was deleted.

        A missing one is fine; one of that name we did not create is left alone.
        """
        full = self._full_netns_name(name)
        path = os.path.join(NETNS_RUN_DIR, full)
        with self._lock:
            try:
                if not _is_marked(path, self.netns_mark):
                    return False
            except NamespaceNotFound:
                return False
            result = self._run(["ip", "netns", "delete", full], check=False)
        if result.returncode != 0 and namespace_exists(path):
            raise KernelError(f"cannot delete network namespace {full}: {result.stderr.strip()}")
        return True

    def list_named_netns(self) -> list[str]:
        """Names (prefix removed) of the named namespaces this node created."""
        try:
            entries = sorted(os.listdir(NETNS_RUN_DIR))
        except FileNotFoundError:
            return []
        prefix = self.named_netns_prefix
        ours = []
        for entry in entries:
            name = entry[len(prefix) :]
            if not entry.startswith(prefix) or not _NETNS_NAME.fullmatch(name):
                continue
            try:
                if _is_marked(os.path.join(NETNS_RUN_DIR, entry), self.netns_mark):
                    ours.append(name)
            except KernelError:
                continue  # gone meanwhile, or a stale file that is no namespace
        return ours

    def configure_unikernel_inner(
        self,
        netns_path: str,
        uplink: str,
        namespace_ip: str,
        namespace_ip_v6: str | None,
        mtu: int,
    ) -> None:
        """Inside a unikernel namespace: forwarding on, bridge virbr0 (gateway addresses)
        with tap0 enslaved, both up, and the nat table sending everything addressed to the
        namespace IP(s) arriving on `uplink` to the guest, the guest's traffic leaving
        `uplink` with the namespace IP(s).
        """
        _check_ifname(uplink)
        _check_mtu(mtu)
        families = [(4, str(_address(namespace_ip, 4, "namespace IP")), UNIKERNEL_GUEST)]
        gateways = [_interface(UNIKERNEL_GATEWAY, 4, "unikernel gateway")]
        if namespace_ip_v6:
            v6 = str(_address(namespace_ip_v6, 6, "namespace IPv6"))
            families.append((6, v6, UNIKERNEL_GUEST_V6))
            gateways.append(_interface(UNIKERNEL_GATEWAY_V6, 6, "unikernel gateway"))
        self._check_not_node(netns_path)
        where = f"unikernel namespace {netns_path}"
        with closing_iproute(netns_path) as ipr:
            bridge = _bridge_in(ipr, UNIKERNEL_BRIDGE, mtu, where)
            tap = _tap_in(ipr, UNIKERNEL_TAP, where)
            _write_sysctls(netns_path, _unikernel_sysctls(bool(namespace_ip_v6)), where)
            _set_link(ipr, bridge, mtu=mtu, up=True)
            _sync_addresses(ipr, bridge, gateways)
            if namespace_ip_v6:
                _ensure_link_local(ipr, _require(ipr, UNIKERNEL_BRIDGE, where))
            _set_link(ipr, tap, mtu=mtu, master=bridge.index, up=True)
        for family, address, guest in families:
            rules = unikernel_nat_rules(uplink, address, guest)
            _sync_own_nat_table(netns_path, family, rules, where)

    # ---- port mappings ----------------------------------------------------------

    def ensure_port_mapping(
        self, mapping: Any, namespace_ip: str, namespace_ip_v6: str | None = None
    ) -> None:
        """DNAT rule(s) in nat OAKESTRA: host_port -> namespace_ip[_v6]:container_port."""
        targets = [(4, _address(namespace_ip, 4, "namespace IP"))]
        if namespace_ip_v6:
            targets.append((6, _address(namespace_ip_v6, 6, "namespace IPv6")))
        with self._lock:
            for family, target in targets:
                spec = port_mapping_spec(mapping, namespace_ip, str(target))
                if not self._rule_exists(family, "nat", NAT_CHAIN, spec):
                    self._iptables(family, "-t", "nat", "-A", NAT_CHAIN, *spec)

    def delete_port_mapping(
        self, mapping: Any, namespace_ip: str, namespace_ip_v6: str | None = None
    ) -> None:
        """Remove the rules of this mapping for `namespace_ip` (v4 and v6; found by comment).

        `namespace_ip_v6` is not needed: the IPv6 rule carries the IPv4 comment too.
        """
        wanted = (str(_address(namespace_ip, 4, "namespace IP")), _mapping_key(mapping))
        with self._lock:
            for family in IPTABLES:
                rules = _rules_of(self._list_table(family, "nat"), NAT_CHAIN)
                gone = [line for line in rules if _parsed_key(line) == wanted]
                self._restore(family, {"nat": [_as_delete(line) for line in gone]})

    def list_port_mappings(self) -> list[tuple[str, PortMapping]]:
        """(namespace_ip, mapping) of every port-mapping rule, v4 and v6 merged."""
        found = set()
        with self._lock:
            for family in IPTABLES:
                for line in _rules_of(self._list_table(family, "nat"), NAT_CHAIN):
                    parsed = parse_port_mapping_rule(line)
                    if parsed is not None:
                        found.add(parsed)
        return sorted(found, key=lambda item: (item[0], _mapping_key(item[1])))

    # ---- iptables plumbing -------------------------------------------------------

    def _apply_plan(self, family: int, plan: RulePlan) -> None:
        for table in OWN_CHAINS:
            listing = self._list_table(family, table)
            existing = _chains_in(listing)
            commands = [f"-N {chain}" for chain in OWN_CHAINS[table] if chain not in existing]
            for chain, rules in plan.chains.get(table, {}).items():
                if chain not in existing or not self._chain_matches(
                    family, table, chain, rules, listing
                ):
                    commands.append(f"-F {chain}")
                    commands += [_rule_line("-A", chain, rule) for rule in rules]
            for jump in plan.jumps.get(table, ()):
                commands += self._jump_fixes(family, table, jump, listing, existing)
            self._restore(family, {table: commands})

    def _chain_matches(self, family, table, chain, rules, listing) -> bool:
        if len(_rules_of(listing, chain)) != len(rules):
            return False
        return all(self._rule_exists(family, table, chain, rule) for rule in rules)

    def _jump_fixes(self, family, table, jump: Jump, listing, existing) -> list[str]:
        """Commands that leave exactly one jump `jump` at the top of its built-in chain."""
        current = [
            line for line in _jumps_to(listing, (jump.chain,)) if line.split()[1] == jump.builtin
        ]
        rule = (*jump.match, "-j", jump.chain)
        exists = len(current) == 1 and jump.chain in existing
        if exists and self._rule_exists(family, table, jump.builtin, rule):
            return []
        return [_as_delete(line) for line in current] + [
            _rule_line("-I", f"{jump.builtin} 1", rule)
        ]

    def _list_table(self, family: int, table: str) -> list[str]:
        return self._iptables(family, "-t", table, "-S").splitlines()

    def _rule_exists(self, family: int, table: str, chain: str, rule: Sequence[str]) -> bool:
        result = self._run([IPTABLES[family], "-w", "-t", table, "-C", chain, *rule], check=False)
        return result.returncode == 0

    def _iptables(self, family: int, *args: str) -> str:
        return self._run([IPTABLES[family], "-w", *args]).stdout

    def _restore(self, family: int, commands_by_table: Mapping[str, Sequence[str]]) -> None:
        """Apply iptables commands atomically per table (iptables-restore --noflush)."""
        script = "".join(
            f"*{table}\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"
            for table, lines in commands_by_table.items()
            if lines
        )
        if script:
            self._run([f"{IPTABLES[family]}-restore", "--noflush", "-w"], stdin=script)

    def _run(self, argv: list[str], *, check: bool = True, stdin: str | None = None):
        return _run_command(self.netns_path, self.where, argv, check=check, stdin=stdin)


def _run_command(
    netns_path: str | None,
    where: str,
    argv: list[str],
    *,
    check: bool = True,
    stdin: str | None = None,
):
    """Run `argv` inside `netns_path` (None: here); KernelError naming it if it fails."""
    command = argv if netns_path is None else _nsenter(netns_path, argv)
    shown = " ".join(argv) if stdin is None else f"{argv[0]} with {stdin!r}"
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, input=stdin, timeout=COMMAND_TIMEOUT
        )
    except FileNotFoundError:
        raise KernelError(f"cannot run {command[0]}: not installed") from None
    except subprocess.TimeoutExpired:
        raise KernelError(f"{shown} in {where} did not finish in {COMMAND_TIMEOUT} s") from None
    if check and result.returncode != 0:
        raise KernelError(f"{shown} in {where} failed: {result.stderr.strip()}")
    return result


def _tap_in(ipr: IPRoute, name: str, where: str) -> _Link:
    """The persistent TAP device `name` of `ipr`'s namespace, created if missing."""
    link = _find(ipr, name)
    if link is not None:
        if link.kind != "tun":
            raise KernelError(f"{name} exists in {where} but is a {link.kind}, not a TAP")
        return link
    with _netlink(f"cannot create TAP {name} in {where}"):
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
    return _require(ipr, name, f"cannot create TAP {name}")


def _unikernel_sysctls(ipv6: bool) -> dict[str, str]:
    values = {"net/ipv4/ip_forward": "1"}
    if ipv6:
        values["net/ipv6/conf/all/forwarding"] = "1"
        # The gateway address is usable at once; the TAP, a bridge port, needs no IPv6.
        values[f"net/ipv6/conf/{UNIKERNEL_BRIDGE}/accept_dad"] = "0"
        values[f"net/ipv6/conf/{UNIKERNEL_TAP}/disable_ipv6"] = "1"
    return values


def _mark_netns(netns_path: str, mark: str) -> None:
    with closing_iproute(netns_path) as ipr:
        lo = _require(ipr, "lo", f"cannot mark {netns_path}")
        with _netlink(f"cannot mark {netns_path} as ours"):
            ipr.link("set", index=lo.index, ifalias=mark)


def _is_marked(netns_path: str, mark: str) -> bool:
    """True if the namespace carries `mark`; NamespaceNotFound if there is none."""
    with closing_iproute(netns_path) as ipr:
        with _netlink(f"cannot read the loopback device of {netns_path}"):
            msgs = ipr.link("get", ifname="lo")
    return msgs[0].get_attr("IFLA_IFALIAS") == mark


def _sync_own_nat_table(
    netns_path: str, family: int, rules: Sequence[tuple[str, tuple[str, ...]]], where: str
) -> None:
    """Make the whole nat table of a namespace we own exactly `rules` (chain, rule)."""
    tool = IPTABLES[family]
    listing = _run_command(netns_path, where, [tool, "-w", "-t", "nat", "-S"]).stdout
    current = [line for line in listing.splitlines() if line and not line.startswith("-P ")]
    if len(current) == len(rules) and all(
        _run_command(
            netns_path, where, [tool, "-w", "-t", "nat", "-C", chain, *rule], check=False
        ).returncode
        == 0
        for chain, rule in rules
    ):
        return
    script = (
        "*nat\n"
        + "".join(f":{chain} ACCEPT [0:0]\n" for chain in _NAT_BUILTINS)
        + "".join(_rule_line("-A", chain, rule) + "\n" for chain, rule in rules)
        + "COMMIT\n"
    )
    _run_command(netns_path, where, [f"{tool}-restore", "-w"], stdin=script)


def _bridge_in(ipr: IPRoute, name: str, mtu: int, where: str) -> _Link:
    """The bridge `name` of `ipr`'s namespace, created if missing."""
    link = _find(ipr, name)
    if link is not None:
        if link.kind != "bridge":
            raise KernelError(f"{name} exists in {where} but is a {link.kind}, not a bridge")
        return link
    with _netlink(f"cannot create bridge {name} in {where}"):
        ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
    link = _require(ipr, name, f"cannot create bridge {name}")
    # A set address sticks; otherwise the bridge takes the lowest port MAC and the
    # gateway MAC its clients know changes whenever ports come and go.
    with _netlink(f"cannot fix the MAC address of {name}"):
        ipr.link("set", index=link.index, address=link.mac)
    return link


@contextmanager
def closing_iproute(netns_path: str) -> Iterator[IPRoute]:
    """A netlink socket inside the namespace at `netns_path`, closed afterwards."""
    ipr = _open_iproute(netns_path)
    try:
        yield ipr
    finally:
        ipr.close()


def _same_file(path_a: str, path_b: str) -> bool:
    a, b = os.stat(path_a), os.stat(path_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _nsenter(netns_path: str, argv: Sequence[str]) -> list[str]:
    return ["nsenter", f"--net={netns_path}", "--", *argv]


def _write_sysctls(netns_path: str | None, values: Mapping[str, str], where: str) -> None:
    """Set sysctls (slash-separated keys) in the namespace, leaving equal values alone."""
    for key in values:
        if ".." in key.split("/") or key.startswith("/"):
            raise ValueError(f"invalid sysctl key {key!r}")
    if netns_path is None:
        for key, value in values.items():
            _write_sysctl_here(key, value, where)
        return
    if not namespace_exists(netns_path):
        raise NamespaceNotFound(f"network namespace {netns_path} not found")
    pairs = [f"{key}={value}" for key, value in values.items()]
    argv = _nsenter(netns_path, ["sh", "-c", _SYSCTL_SCRIPT, "sh", *pairs])
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KernelError(f"cannot set sysctls {', '.join(pairs)} in {where}: {err}") from None
    if result.returncode != 0:
        raise KernelError(
            f"cannot set sysctls {', '.join(pairs)} in {where}: {result.stderr.strip()}"
        )


def _write_sysctl_here(key: str, value: str, where: str) -> None:
    path = os.path.join("/proc/sys", key)
    try:
        with open(path) as current:
            if current.read().strip() == value:
                return
        with open(path, "w") as target:
            target.write(value)
    except OSError as err:
        raise KernelError(f"cannot set sysctl {key}={value} in {where}: {err.strerror}") from None


# ---- validation (pure) --------------------------------------------------------------


def _check_ifname(name: object) -> None:
    if not isinstance(name, str) or not 0 < len(name) <= IFNAMSIZ or "/" in name or " " in name:
        raise ValueError(
            f"invalid interface name {name!r} (1-{IFNAMSIZ} characters, no / or space)"
        )


def _check_own_name(name: object) -> None:
    _check_ifname(name)
    if not name.startswith(PREFIX):
        raise ValueError(f"interface name {name!r} must start with {PREFIX!r}")


def _check_mtu(mtu: object) -> None:
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise ValueError(f"invalid MTU {mtu!r} (68-65535)")


def _interface(cidr: object, version: int, what: str) -> Any:
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError:
        raise ValueError(
            f"invalid {what} {cidr!r}: expected an IPv{version} address/prefix"
        ) from None
    if iface.version != version or "/" not in str(cidr):
        raise ValueError(f"invalid {what} {cidr!r}: expected an IPv{version} address/prefix")
    return iface


def _address(value: object, version: int, what: str) -> Any:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"invalid {what} {value!r}: expected an IPv{version} address") from None
    if address.version != version:
        raise ValueError(f"invalid {what} {value!r}: expected an IPv{version} address")
    return address


def _network(value: object, version: int, what: str) -> str:
    try:
        network = ipaddress.ip_network(value)
    except (ValueError, TypeError):
        raise ValueError(f"invalid {what} {value!r}: expected an IPv{version} network") from None
    if network.version != version:
        raise ValueError(f"invalid {what} {value!r}: expected an IPv{version} network")
    return str(network)


def _mapping_key(mapping: Any) -> tuple[int, int, str]:
    """(host_port, container_port, protocol) of a port mapping, validated."""
    try:
        host_port, container_port, protocol = (
            mapping.host_port,
            mapping.container_port,
            mapping.protocol,
        )
    except AttributeError:
        raise ValueError(
            f"invalid port mapping {mapping!r}: needs host_port, container_port, protocol"
        ) from None
    for port in (host_port, container_port):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"invalid port mapping {mapping!r}: port {port!r} not in 1-65535")
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"invalid port mapping {mapping!r}: protocol must be tcp or udp")
    return host_port, container_port, protocol


# ---- rule text (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class Jump:
    """A jump from a built-in chain to one of ours, guarded by `match`."""

    builtin: str
    chain: str
    match: tuple[str, ...] = ()


@dataclass(frozen=True)
class RulePlan:
    """The rules of our own chains and the jumps into them, for one IP family."""

    chains: dict[str, dict[str, list[tuple[str, ...]]]]
    jumps: dict[str, list[Jump]]


def base_rule_plan(family: int, bridge: str, tun: str, subnet: str, platform: str) -> RulePlan:
    """Forwarding, port-mapping jumps and masquerading for one IP family."""
    subnet = _network(subnet, family, "node subnet")
    platform = _network(platform, family, "platform range")
    loopback = "127.0.0.0/8" if family == 4 else "::1/128"
    local = ("-m", "addrtype", "--dst-type", "LOCAL")
    forward = [
        ("-i", bridge, "-j", "ACCEPT"),  # containers to anywhere (the TUN included)
        ("-i", tun, "-o", bridge, "-j", "ACCEPT"),  # tunnelled traffic to containers
        ("-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "ACCEPT"),
    ]
    postrouting = [
        ("-o", bridge, "-j", "RETURN"),
        ("-o", tun, "-j", "RETURN"),  # service-IP traffic keeps its namespace source
        ("-d", platform, "-j", "RETURN"),
        ("-s", subnet, "-j", "MASQUERADE"),
    ]
    return RulePlan(
        chains={"filter": {FILTER_CHAIN: forward}, "nat": {POSTROUTING_CHAIN: postrouting}},
        jumps={
            "filter": [Jump("FORWARD", FILTER_CHAIN)],
            "nat": [
                # Only traffic arriving at the node, never the containers' own connections.
                Jump("PREROUTING", NAT_CHAIN, ("!", "-i", bridge, *local)),
                # Host processes reaching a mapped port; loopback stays with the host.
                Jump("OUTPUT", NAT_CHAIN, ("!", "-d", loopback, *local)),
                Jump("POSTROUTING", POSTROUTING_CHAIN),
            ],
        },
    )


def unikernel_nat_rules(
    uplink: str, namespace_ip: str, guest_ip: str
) -> list[tuple[str, tuple[str, ...]]]:
    """(chain, rule) of a unikernel namespace's nat table: what is addressed to the
    namespace IP goes to the guest; the guest's traffic leaves with the namespace IP."""
    return [
        (
            "PREROUTING",
            ("-d", namespace_ip, "-i", uplink, "-j", "DNAT", "--to-destination", guest_ip),
        ),
        ("POSTROUTING", ("-o", uplink, "-j", "SNAT", "--to-source", namespace_ip)),
    ]


def port_mapping_spec(mapping: Any, namespace_ip: str, target_ip: str) -> tuple[str, ...]:
    """Rule arguments DNATing host_port to target_ip:container_port, tagged with namespace_ip."""
    host_port, container_port, protocol = _mapping_key(mapping)
    target = f"[{target_ip}]" if ":" in target_ip else target_ip
    return (
        "-p", protocol, "--dport", str(host_port),
        "-m", "comment", "--comment", f"{COMMENT_PREFIX}{namespace_ip}",
        "-j", "DNAT", "--to-destination", f"{target}:{container_port}",
    )  # fmt: skip


def parse_port_mapping_rule(line: str) -> tuple[str, PortMapping] | None:
    """(namespace_ip, mapping) of an `iptables -S` line of ours, else None."""
    try:
        tokens = shlex.split(line)
    except ValueError:
        return None
    values = {}
    for flag in ("-p", "--dport", "--comment", "--to-destination", "-j"):
        if flag in tokens[:-1]:
            values[flag] = tokens[tokens.index(flag) + 1]
    comment = values.get("--comment", "")
    if values.get("-j") != "DNAT" or not comment.startswith(COMMENT_PREFIX):
        return None
    try:
        mapping = PortMapping(
            host_port=int(values["--dport"]),
            container_port=int(values["--to-destination"].rsplit(":", 1)[1]),
            protocol=values["-p"],
        )
    except (KeyError, IndexError, ValueError):
        return None
    return comment.removeprefix(COMMENT_PREFIX), mapping


def _parsed_key(line: str) -> tuple[str, tuple[int, int, str]] | None:
    parsed = parse_port_mapping_rule(line)
    return None if parsed is None else (parsed[0], _mapping_key(parsed[1]))


def _rule_line(command: str, chain: str, rule: Sequence[str]) -> str:
    """One iptables-restore line; restore understands double quotes, not shell quoting."""
    return " ".join([command, chain, *(_quote(arg) for arg in rule)])


def _quote(arg: str) -> str:
    if _PLAIN_ARG.fullmatch(arg):
        return arg
    if '"' in arg or "\\" in arg or "\n" in arg:
        raise ValueError(f"cannot pass {arg!r} to iptables-restore")
    return f'"{arg}"'


def _chains_in(listing: Sequence[str]) -> set[str]:
    return {line.split()[1] for line in listing if line.startswith("-N ")}


def _rules_of(listing: Sequence[str], chain: str) -> list[str]:
    return [line for line in listing if line.startswith(f"-A {chain} ")]


def _jumps_to(listing: Sequence[str], chains: Sequence[str]) -> list[str]:
    """Rules of other chains whose target (-j/-g) is one of `chains`."""
    found = []
    for line in listing:
        tokens = line.split()
        if len(tokens) < 4 or tokens[0] != "-A" or tokens[1] in chains:
            continue
        for flag in ("-j", "-g"):
            if flag in tokens[:-1] and tokens[tokens.index(flag) + 1] in chains:
                found.append(line)
                break
    return found


def _as_delete(line: str) -> str:
    """An `iptables -S` rule line as the command deleting that rule."""
    return "-D" + line[2:]
