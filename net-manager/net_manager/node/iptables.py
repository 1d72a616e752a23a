"""Applying firewall rules: read with iptables-save, write with one iptables-restore.

Every change renders the desired content of our chains (firewall.py) and applies it in
one `iptables-restore --noflush` transaction per address family, as kube-proxy does:
the built-in chains and everyone else's rules are left alone, our chains are replaced
whole, the jumps into them are fixed in the same transaction. Nothing is written when
the state is already right: port-mapping rules are compared as iptables-save prints
them, the base chains against what was read back right after this Kernel last wrote
them (iptables prints rules in its own normal form, so the rendered text is not
compared with the listing). A unikernel namespace's nat table, which is all ours, goes
the same way, without --noflush.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from net_manager.node.base import KernelBase
from net_manager.node.firewall import (
    IPTABLES,
    NAT_BUILTINS,
    NAT_CHAIN,
    OWN_CHAINS,
    as_delete,
    base_rule_plan,
    chain_rules,
    declared_chains,
    jumps_to,
    mapping_lines,
    own_part,
    parse_port_mapping_rule,
    port_mapping_spec,
    restore_script,
    rule_line,
    rules_of,
    tables_of,
)
from net_manager.node.names import PLATFORM_V4, PLATFORM_V6
from net_manager.node.portmap import PortMapping
from net_manager.node.validate import address_of, check_ifname, mapping_key


class FirewallOps(KernelBase):
    """Our chains, the jumps into them and the port-mapping DNAT rules (v4 and v6)."""

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
        check_ifname(bridge)
        check_ifname(tun)
        families = [(4, subnet_v4, platform_v4)]
        if subnet_v6 is not None:
            families.append((6, subnet_v6, platform_v6))
        for family, subnet, platform in families:
            plan = base_rule_plan(family, bridge, tun, subnet, platform)
            chains: dict[str, dict[str, list[str] | None]] = {
                table: {chain: chain_rules(chain, rules) for chain, rules in by_chain.items()}
                for table, by_chain in plan.chains.items()
            }
            chains.setdefault("nat", {})[NAT_CHAIN] = None  # port mappings: kept as they are
            with self._lock:
                tables = self._tables(family)
                script = restore_script(tables, chains, plan.jumps)
                key = ("base", family)
                if self._applied.get(key) == (script, own_part(tables)):
                    continue
                self._restore(family, script)
                # What iptables made of it: the next call compares against this.
                after = self._tables(family)
                self._applied[key] = (restore_script(after, chains, plan.jumps), own_part(after))

    def delete_base_rules(self) -> None:
        """Remove our jumps and chains (port mappings included) in iptables and ip6tables."""
        with self._lock:
            for family in IPTABLES:
                tables = self._tables(family)
                script = []
                for table, chains in OWN_CHAINS.items():
                    lines = tables.get(table, [])
                    existing = declared_chains(lines) & set(chains)
                    commands = [as_delete(line) for line in jumps_to(lines, chains)]
                    commands += [f"-F {chain}" for chain in sorted(existing)]
                    commands += [f"-X {chain}" for chain in sorted(existing)]
                    if commands:
                        script += [f"*{table}", *commands, "COMMIT"]
                if script:
                    self._restore(family, "".join(line + "\n" for line in script))
                self._applied.pop(("base", family), None)

    def ensure_port_mapping(
        self, mapping: Any, namespace_ip: str, namespace_ip_v6: str | None = None
    ) -> None:
        """DNAT rule(s) in nat OAKESTRA: host_port -> namespace_ip[_v6]:container_port."""
        targets = [(4, address_of(namespace_ip, 4, "namespace IP"))]
        if namespace_ip_v6:
            targets.append((6, address_of(namespace_ip_v6, 6, "namespace IPv6")))
        with self._lock:
            for family, target in targets:
                spec = port_mapping_spec(mapping, namespace_ip, str(target))
                self._sync_mappings(family, add=spec)

    def delete_port_mapping(
        self, mapping: Any, namespace_ip: str, namespace_ip_v6: str | None = None
    ) -> None:
        """Remove the rules of this mapping for `namespace_ip` (v4 and v6; found by comment).

        `namespace_ip_v6` is not needed: the IPv6 rule carries the IPv4 comment too.
        """
        wanted = (str(address_of(namespace_ip, 4, "namespace IP")), mapping_key(mapping))
        with self._lock:
            for family in IPTABLES:
                self._sync_mappings(family, remove=wanted)

    def list_port_mappings(self) -> list[tuple[str, PortMapping]]:
        """(namespace_ip, mapping) of every port-mapping rule, v4 and v6 merged."""
        found = set()
        with self._lock:
            for family in IPTABLES:
                for line in rules_of(self._tables(family).get("nat", []), NAT_CHAIN):
                    parsed = parse_port_mapping_rule(line)
                    if parsed is not None:
                        found.add(parsed)
        return sorted(found, key=lambda item: (item[0], mapping_key(item[1])))

    def sync_own_nat_table(
        self,
        netns_path: str,
        family: int,
        rules: Sequence[tuple[str, tuple[str, ...]]],
        where: str,
    ) -> None:
        """Make the whole nat table of a namespace we own exactly `rules` (chain, rule)."""
        script = "".join(
            line + "\n"
            for line in [
                "*nat",
                *(f":{chain} ACCEPT [0:0]" for chain in NAT_BUILTINS),
                *(rule_line("-A", chain, rule) for chain, rule in rules),
                "COMMIT",
            ]
        )
        key = ("nat", netns_path, family)
        with self._lock:
            if self._applied.get(key) == (script, self._tables(family, netns_path, where)):
                return
            tool = IPTABLES[family]
            self._run_in(netns_path, where, [f"{tool}-restore", "-w"], stdin=script)
            self._applied[key] = (script, self._tables(family, netns_path, where))

    # ---- plumbing ---------------------------------------------------------------

    def _sync_mappings(
        self,
        family: int,
        add: Sequence[str] | None = None,
        remove: tuple[str, tuple[int, int, str]] | None = None,
    ) -> None:
        """Rewrite the port-mapping chain with `add` in it and `remove` out, if that changes it."""
        tables = self._tables(family)
        current = rules_of(tables.get("nat", []), NAT_CHAIN)
        lines = mapping_lines(current, add, remove)
        if lines == current:
            return
        self._restore(family, restore_script(tables, {"nat": {NAT_CHAIN: lines}}, {}))

    def _tables(
        self, family: int, netns_path: str | None = None, where: str | None = None
    ) -> dict[str, list[str]]:
        """iptables-save of one family, in the node namespace or in `netns_path`."""
        argv = [f"{IPTABLES[family]}-save"]
        if netns_path is None:
            return tables_of(self._run(argv).stdout)
        return tables_of(self._run_in(netns_path, where or netns_path, argv).stdout)

    def _restore(self, family: int, script: str) -> None:
        """Apply `script` in one transaction per table, leaving all else alone."""
        self._run([f"{IPTABLES[family]}-restore", "--noflush", "-w"], stdin=script)
