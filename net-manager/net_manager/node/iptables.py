"""Applying firewall rules with iptables-restore, in the node and unikernel namespaces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from net_manager.node.base import KernelBase
from net_manager.node.commands import run_command
from net_manager.node.firewall import (
    IPTABLES,
    NAT_BUILTINS,
    NAT_CHAIN,
    OWN_CHAINS,
    Jump,
    RulePlan,
    as_delete,
    base_rule_plan,
    chains_in,
    jumps_to,
    parse_port_mapping_rule,
    parsed_key,
    port_mapping_spec,
    rule_line,
    rules_of,
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
            with self._lock:
                self._apply_plan(family, plan)

    def delete_base_rules(self) -> None:
        """Remove our jumps and chains (port mappings included) in iptables and ip6tables."""
        with self._lock:
            for family in IPTABLES:
                for table, chains in OWN_CHAINS.items():
                    listing = self._list_table(family, table)
                    commands = [as_delete(line) for line in jumps_to(listing, chains)]
                    for chain in chains:
                        if chain in chains_in(listing):
                            commands += [f"-F {chain}", f"-X {chain}"]
                    self._restore(family, {table: commands})

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
                if not self._rule_exists(family, "nat", NAT_CHAIN, spec):
                    self._iptables(family, "-t", "nat", "-A", NAT_CHAIN, *spec)

    def delete_port_mapping(
        self, mapping: Any, namespace_ip: str, namespace_ip_v6: str | None = None
    ) -> None:
        """Remove the rules of this mapping for `namespace_ip` (v4 and v6; found by comment).

        `namespace_ip_v6` is not needed: the IPv6 rule carries the IPv4 comment too.
        """
        wanted = (str(address_of(namespace_ip, 4, "namespace IP")), mapping_key(mapping))
        with self._lock:
            for family in IPTABLES:
                rules = rules_of(self._list_table(family, "nat"), NAT_CHAIN)
                gone = [line for line in rules if parsed_key(line) == wanted]
                self._restore(family, {"nat": [as_delete(line) for line in gone]})

    def list_port_mappings(self) -> list[tuple[str, PortMapping]]:
        """(namespace_ip, mapping) of every port-mapping rule, v4 and v6 merged."""
        found = set()
        with self._lock:
            for family in IPTABLES:
                for line in rules_of(self._list_table(family, "nat"), NAT_CHAIN):
                    parsed = parse_port_mapping_rule(line)
                    if parsed is not None:
                        found.add(parsed)
        return sorted(found, key=lambda item: (item[0], mapping_key(item[1])))

    def _apply_plan(self, family: int, plan: RulePlan) -> None:
        for table in OWN_CHAINS:
            listing = self._list_table(family, table)
            existing = chains_in(listing)
            commands = [f"-N {chain}" for chain in OWN_CHAINS[table] if chain not in existing]
            for chain, rules in plan.chains.get(table, {}).items():
                if chain not in existing or not self._chain_matches(
                    family, table, chain, rules, listing
                ):
                    commands.append(f"-F {chain}")
                    commands += [rule_line("-A", chain, rule) for rule in rules]
            for jump in plan.jumps.get(table, ()):
                commands += self._jump_fixes(family, table, jump, listing, existing)
            self._restore(family, {table: commands})

    def _chain_matches(self, family, table, chain, rules, listing) -> bool:
        if len(rules_of(listing, chain)) != len(rules):
            return False
        return all(self._rule_exists(family, table, chain, rule) for rule in rules)

    def _jump_fixes(self, family, table, jump: Jump, listing, existing) -> list[str]:
        """Commands that leave exactly one jump `jump` at the top of its built-in chain."""
        current = [
            line for line in jumps_to(listing, (jump.chain,)) if line.split()[1] == jump.builtin
        ]
        rule = (*jump.match, "-j", jump.chain)
        exists = len(current) == 1 and jump.chain in existing
        if exists and self._rule_exists(family, table, jump.builtin, rule):
            return []
        return [as_delete(line) for line in current] + [rule_line("-I", f"{jump.builtin} 1", rule)]

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


def sync_own_nat_table(
    netns_path: str, family: int, rules: Sequence[tuple[str, tuple[str, ...]]], where: str
) -> None:
    """Make the whole nat table of a namespace we own exactly `rules` (chain, rule)."""
    tool = IPTABLES[family]
    listing = run_command(netns_path, where, [tool, "-w", "-t", "nat", "-S"]).stdout
    current = [line for line in listing.splitlines() if line and not line.startswith("-P ")]
    if len(current) == len(rules) and all(
        run_command(
            netns_path, where, [tool, "-w", "-t", "nat", "-C", chain, *rule], check=False
        ).returncode
        == 0
        for chain, rule in rules
    ):
        return
    script = (
        "*nat\n"
        + "".join(f":{chain} ACCEPT [0:0]\n" for chain in NAT_BUILTINS)
        + "".join(rule_line("-A", chain, rule) + "\n" for chain, rule in rules)
        + "COMMIT\n"
    )
    run_command(netns_path, where, [f"{tool}-restore", "-w"], stdin=script)
