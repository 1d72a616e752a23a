"""The kernel tunnel's device, fdb, neighbours, routes and fwmark rules (see `tunnel`).

`ensure_tunnel(spec)` makes the node namespace hold exactly what the spec describes
(everything else on the device, and every fwmark rule of ours no peer needs, is
removed); `delete_tunnel()` removes the device (its routes, neighbours and fdb entries
go with it) and our rules. Both idempotent.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from net_manager.node.base import KernelBase
from net_manager.node.errors import KernelError
from net_manager.node.netlink import find_link, netlink_errors, require_link, set_link
from net_manager.node.sysctls import write_sysctls
from net_manager.node.tunnel import DEVICE, RULE_PRIORITY, TunnelSpec
from net_manager.node.validate import check_mtu, check_own_name

_RTNH_F_ONLINK = 4
_NUD_PERMANENT = 0x80
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


class TunnelOps(KernelBase):
    """The VXLAN device between our nodes and the policy routing of its replies."""

    def ensure_tunnel(self, spec: TunnelSpec) -> None:
        check_own_name(spec.device)
        check_mtu(spec.mtu)
        with self._lock:
            link = self._vxlan_link(spec)
            set_link(self._ipr, link, mtu=spec.mtu, up=True)
            with netlink_errors(f"cannot program {spec.device}"):
                self._sync_fdb(link.index, spec)
                self._sync_neighbours(link.index, spec)
                self._sync_routes(link.index, spec)
                self._sync_rules(spec.bridge, spec.rules())

    def delete_tunnel(self, device: str = DEVICE, bridge: str | None = None) -> None:
        """Remove the device and every fwmark rule of ours (on any bridge, or `bridge`)."""
        with self._lock, netlink_errors(f"cannot remove {device}"):
            self._sync_rules(bridge, set())
            link = find_link(self._ipr, device)
            if link is not None:
                self._ipr.link("del", index=link.index)

    def tunnel_state(self, device: str = DEVICE) -> dict[str, Any]:
        """What the kernel holds for the tunnel (tests, status): the device's settings,
        fdb, neighbours, routes (all tables) and our rules; {} without the device."""
        with self._lock:
            link = find_link(self._ipr, device)
            if link is None:
                return {"rules": sorted(self._our_rules(None))}
            info = self._ipr.link("get", index=link.index)[0]
            data = info.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
            return {
                "mac": link.mac,
                "mtu": link.mtu,
                "up": link.up,
                "port": data.get_attr("IFLA_VXLAN_PORT"),
                "local": data.get_attr("IFLA_VXLAN_LOCAL"),
                "learning": data.get_attr("IFLA_VXLAN_LEARNING"),
                "fdb": sorted(self._fdb(link.index)),
                "neighbours": sorted(self._neighbours(link.index)),
                "routes": sorted(self._routes(link.index)),
                "rules": sorted(self._our_rules(None)),
            }

    # ------------------------------------------------------------ internals

    def _vxlan_link(self, spec: TunnelSpec) -> Any:
        link = find_link(self._ipr, spec.device)
        if link is not None and (link.kind != "vxlan" or not self._same_device(link, spec)):
            with netlink_errors(f"cannot replace {spec.device}"):
                self._ipr.link("del", index=link.index)  # settings cannot change in place
            link = None
        if link is None:
            with netlink_errors(f"cannot create {spec.device} in {self.where}"):
                self._ipr.link(
                    "add",
                    ifname=spec.device,
                    kind="vxlan",
                    vxlan_id=spec.vni,
                    vxlan_local=spec.local_ip,
                    vxlan_port=spec.port,
                    vxlan_learning=0,
                    address=spec.mac,
                    mtu=spec.mtu,
                )
            # No link-local address: nothing of the node's own may go out of the device.
            write_sysctls(
                self.netns_path, {f"net/ipv6/conf/{spec.device}/addr_gen_mode": "1"}, self.where
            )
            link = require_link(self._ipr, spec.device, f"cannot create {spec.device}")
        return link

    def _same_device(self, link: Any, spec: TunnelSpec) -> bool:
        info = self._ipr.link("get", index=link.index)[0]
        data = info.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
        if data is None:
            return False
        return (
            data.get_attr("IFLA_VXLAN_ID") == spec.vni
            and data.get_attr("IFLA_VXLAN_LOCAL") == spec.local_ip
            and data.get_attr("IFLA_VXLAN_PORT") == spec.port
            and not data.get_attr("IFLA_VXLAN_LEARNING")
            and link.mac == spec.mac
        )

    def _fdb(self, index: int) -> set[tuple[str, str]]:
        found = set()
        for msg in self._ipr.fdb("dump", ifindex=index):
            if msg["ifindex"] == index and msg.get_attr("NDA_DST"):
                found.add((msg.get_attr("NDA_LLADDR"), msg.get_attr("NDA_DST")))
        return found

    def _sync_fdb(self, index: int, spec: TunnelSpec) -> None:
        wanted, have = spec.fdb(), self._fdb(index)
        for mac, dst in have - wanted:
            self._ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst)
        for mac, dst in wanted - have:
            self._ipr.fdb("append", ifindex=index, lladdr=mac, dst=dst)

    def _neighbours(self, index: int) -> set[tuple[str, str]]:
        found = set()
        for msg in self._ipr.neigh("dump", ifindex=index):
            if msg["ifindex"] == index and msg["state"] & _NUD_PERMANENT:
                found.add((msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")))
        return found

    def _sync_neighbours(self, index: int, spec: TunnelSpec) -> None:
        wanted, have = spec.neighbours(), self._neighbours(index)
        for dst, _mac in have - wanted:
            self._ipr.neigh("del", ifindex=index, dst=dst)
        for dst, mac in wanted - have:
            self._ipr.neigh("replace", ifindex=index, dst=dst, lladdr=mac, state=_NUD_PERMANENT)

    def _routes(self, index: int) -> set[tuple[str, str, int]]:
        found = set()
        for family in _FAMILY.values():
            for msg in self._ipr.get_routes(family=family):
                if msg.get_attr("RTA_OIF") != index or msg.get_attr("RTA_GATEWAY") is None:
                    continue
                dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                network = ipaddress.ip_network(f"{dst}/{msg['dst_len']}")
                table = msg.get_attr("RTA_TABLE") or msg["table"]
                found.add((str(network), msg.get_attr("RTA_GATEWAY"), table))
        return found

    def _sync_routes(self, index: int, spec: TunnelSpec) -> None:
        wanted, have = spec.routes(), self._routes(index)
        for dst, gateway, table in have - wanted:
            family = _FAMILY[ipaddress.ip_network(dst).version]
            self._ipr.route("del", dst=dst, gateway=gateway, oif=index, table=table, family=family)
        for dst, gateway, table in wanted - have:
            version = ipaddress.ip_network(dst).version
            self._ipr.route(
                "replace",
                dst=dst,
                gateway=gateway,
                oif=index,
                table=table,
                family=_FAMILY[version],
                flags=_RTNH_F_ONLINK if version == 4 else 0,
            )

    def _our_rules(self, bridge: str | None) -> set[tuple[int, int, str]]:
        """(version, mark, bridge) of the rules at our priority (on `bridge` if given)."""
        found = set()
        for version, family in _FAMILY.items():
            for msg in self._ipr.get_rules(family=family):
                if msg.get_attr("FRA_PRIORITY") != RULE_PRIORITY:
                    continue
                iif = msg.get_attr("FRA_IIFNAME") or ""
                if bridge is None or iif == bridge:
                    found.add((version, msg.get_attr("FRA_FWMARK") or 0, iif))
        return found

    def _sync_rules(self, bridge: str | None, wanted: set[tuple[int, int]]) -> None:
        have = self._our_rules(bridge)
        for version, mark, iif in have:
            if (version, mark) not in wanted or iif != bridge:
                self._rule("del", version, mark, iif)
        present = {(v, m) for v, m, iif in have if iif == bridge}
        if bridge is None:
            if wanted:
                raise KernelError("fwmark rules need the bridge they apply to")
            return
        for version, mark in wanted - present:
            self._rule("add", version, mark, bridge)

    def _rule(self, action: str, version: int, mark: int, bridge: str) -> None:
        self._ipr.rule(
            action,
            family=_FAMILY[version],
            priority=RULE_PRIORITY,
            fwmark=mark,
            fwmask=0xFFFFFFFF,
            iifname=bridge,
            table=mark,
        )
