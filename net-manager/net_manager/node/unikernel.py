"""The inside of a unikernel's namespace: bridge virbr0, TAP tap0 for the guest, and a
nat table sending everything addressed to the namespace IP to the guest."""

from __future__ import annotations

from net_manager.node.firewall import unikernel_nat_rules
from net_manager.node.iptables import FirewallOps
from net_manager.node.names import (
    UNIKERNEL_BRIDGE,
    UNIKERNEL_GATEWAY,
    UNIKERNEL_GATEWAY_V6,
    UNIKERNEL_GUEST,
    UNIKERNEL_GUEST_V6,
    UNIKERNEL_TAP,
)
from net_manager.node.netlink import (
    bridge_in,
    closing_iproute,
    ensure_link_local,
    require_link,
    set_link,
    sync_addresses,
    tap_in,
)
from net_manager.node.sysctls import write_sysctls
from net_manager.node.validate import address_of, check_ifname, check_mtu, interface_of


class UnikernelOps(FirewallOps):
    """Wiring inside a unikernel namespace."""

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
        check_ifname(uplink)
        check_mtu(mtu)
        families = [(4, str(address_of(namespace_ip, 4, "namespace IP")), UNIKERNEL_GUEST)]
        gateways = [interface_of(UNIKERNEL_GATEWAY, 4, "unikernel gateway")]
        if namespace_ip_v6:
            v6 = str(address_of(namespace_ip_v6, 6, "namespace IPv6"))
            families.append((6, v6, UNIKERNEL_GUEST_V6))
            gateways.append(interface_of(UNIKERNEL_GATEWAY_V6, 6, "unikernel gateway"))
        self._check_not_node(netns_path)
        where = f"unikernel namespace {netns_path}"
        with closing_iproute(netns_path) as ipr:
            bridge = bridge_in(ipr, UNIKERNEL_BRIDGE, mtu, where)
            tap = tap_in(ipr, UNIKERNEL_TAP, where)
            write_sysctls(netns_path, _unikernel_sysctls(bool(namespace_ip_v6)), where)
            set_link(ipr, bridge, mtu=mtu, up=True)
            sync_addresses(ipr, bridge, gateways)
            if namespace_ip_v6:
                ensure_link_local(ipr, require_link(ipr, UNIKERNEL_BRIDGE, where))
            set_link(ipr, tap, mtu=mtu, master=bridge.index, up=True)
        for family, address, guest in families:
            rules = unikernel_nat_rules(uplink, address, guest)
            self.sync_own_nat_table(netns_path, family, rules, where)


def _unikernel_sysctls(ipv6: bool) -> dict[str, str]:
    values = {"net/ipv4/ip_forward": "1"}
    if ipv6:
        values["net/ipv6/conf/all/forwarding"] = "1"
        # The gateway address is usable at once; the TAP, a bridge port, needs no IPv6.
        values[f"net/ipv6/conf/{UNIKERNEL_BRIDGE}/accept_dad"] = "0"
        values[f"net/ipv6/conf/{UNIKERNEL_TAP}/disable_ipv6"] = "1"
    return values
