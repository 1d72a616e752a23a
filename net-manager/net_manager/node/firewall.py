"""Firewall rules as text (pure): what our chains hold, rendered for iptables-restore.

Our rules live in our own chains (filter OAK-FORWARD, nat OAKESTRA for port mappings,
nat OAK-POSTROUTING), each jumped to once from its built-in chain. This module builds
the rules (`base_rule_plan`, `port_mapping_spec`, `unikernel_nat_rules`), renders them
as iptables-restore lines and reads `iptables -S` listings back; `iptables` applies them.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from net_manager.node.portmap import PortMapping
from net_manager.node.tunnel import DEVICE as TUNNEL_DEVICE
from net_manager.node.validate import mapping_key, network_of

FILTER_CHAIN = "OAK-FORWARD"
NAT_CHAIN = "OAKESTRA"  # upstream's name for the port-mapping chain
POSTROUTING_CHAIN = "OAK-POSTROUTING"
OWN_CHAINS = {"filter": (FILTER_CHAIN,), "nat": (NAT_CHAIN, POSTROUTING_CHAIN)}
COMMENT_PREFIX = "oak:"
IPTABLES = {4: "iptables", 6: "ip6tables"}
NAT_BUILTINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
_PLAIN_ARG = re.compile(r"[A-Za-z0-9_@%+=:,./!\[\]-]+")


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
    subnet = network_of(subnet, family, "node subnet")
    platform = network_of(platform, family, "platform range")
    loopback = "127.0.0.0/8" if family == 4 else "::1/128"
    local = ("-m", "addrtype", "--dst-type", "LOCAL")
    forward: list[tuple[str, ...]] = [
        ("-i", bridge, "-j", "ACCEPT"),  # containers to anywhere (the TUN included)
        ("-i", tun, "-o", bridge, "-j", "ACCEPT"),  # tunnelled traffic to containers
        # The kernel tunnel (kernel mode): our nftables table admits what may pass.
        ("-i", TUNNEL_DEVICE, "-o", bridge, "-j", "ACCEPT"),
        ("-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "ACCEPT"),
        # Anything else routed to the containers (e.g. from the uplink straight to a
        # namespace IP) bypasses the tunnel's admission and the port mappings: dropped.
        ("-o", bridge, "-j", "DROP"),
    ]
    postrouting: list[tuple[str, ...]] = [
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
    host_port, container_port, protocol = mapping_key(mapping)
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


def parsed_key(line: str) -> tuple[str, tuple[int, int, str]] | None:
    parsed = parse_port_mapping_rule(line)
    return None if parsed is None else (parsed[0], mapping_key(parsed[1]))


def rule_line(command: str, chain: str, rule: Sequence[str]) -> str:
    """One iptables-restore line; restore understands double quotes, not shell quoting."""
    return " ".join([command, chain, *(_quote(arg) for arg in rule)])


def _quote(arg: str) -> str:
    if _PLAIN_ARG.fullmatch(arg):
        return arg
    if '"' in arg or "\\" in arg or "\n" in arg:
        raise ValueError(f"cannot pass {arg!r} to iptables-restore")
    return f'"{arg}"'


def chains_in(listing: Sequence[str]) -> set[str]:
    return {line.split()[1] for line in listing if line.startswith("-N ")}


def rules_of(listing: Sequence[str], chain: str) -> list[str]:
    return [line for line in listing if line.startswith(f"-A {chain} ")]


def jumps_to(listing: Sequence[str], chains: Sequence[str]) -> list[str]:
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


def as_delete(line: str) -> str:
    """An `iptables -S` rule line as the command deleting that rule."""
    return "-D" + line[2:]


# ---- whole tables: reading iptables-save, rendering iptables-restore -----------------


def tables_of(save_text: str) -> dict[str, list[str]]:
    """iptables-save output as table -> its chain declarations (":NAME POLICY", counters
    dropped) and rules ("-A CHAIN ..."), in order."""
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in save_text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        elif current is not None:
            current.append(" ".join(line.split()[:2]) if line.startswith(":") else line)
    return tables


def declared_chains(lines: Sequence[str]) -> set[str]:
    """Names of the chains declared in one table of tables_of()."""
    return {line[1:].split()[0] for line in lines if line.startswith(":")}


def own_part(tables: dict[str, list[str]]) -> dict[str, list[str]]:
    """What of `tables` is ours: our chains' declarations and rules, and the jumps to them."""
    part: dict[str, list[str]] = {}
    for table, chains in OWN_CHAINS.items():
        lines = tables.get(table, [])
        declared = sorted(declared_chains(lines) & set(chains))
        part[table] = [*declared, *(r for c in chains for r in rules_of(lines, c))]
        part[table] += jumps_to(lines, chains)
    return part


def restore_script(
    tables: dict[str, list[str]],
    chains: dict[str, dict[str, list[str] | None]],
    jumps: dict[str, list[Jump]],
) -> str:
    """An `iptables-restore --noflush` script giving our chains exactly their rules.

    `chains`: table -> chain -> its rule lines ("-A CHAIN ..."), or None for a chain that
    must only exist (created empty if missing, left as it is otherwise). Declaring a chain
    in --noflush mode flushes it, so each listed chain ends up with exactly its lines.
    `jumps`: table -> the jumps from built-in chains, each left once at the top of its
    built-in chain (the old ones deleted in the same transaction). `tables` is the
    current state (tables_of()); the script is one transaction per table.
    """
    script = []
    for table in sorted(set(chains) | set(jumps)):
        current = tables.get(table, [])
        existing = declared_chains(current)
        wanted = chains.get(table, {})
        lines = [
            f":{chain} - [0:0]"
            for chain, rules in wanted.items()
            if rules is not None or chain not in existing
        ]
        table_jumps = jumps.get(table, [])
        lines += [as_delete(line) for line in jumps_to(current, [j.chain for j in table_jumps])]
        for rules in wanted.values():
            lines += rules or []
        for jump in reversed(table_jumps):
            lines.append(rule_line("-I", f"{jump.builtin} 1", (*jump.match, "-j", jump.chain)))
        script += [f"*{table}", *lines, "COMMIT"]
    return "".join(line + "\n" for line in script)


def chain_rules(chain: str, rules: Sequence[Sequence[str]]) -> list[str]:
    """The rule lines ("-A CHAIN ...") of `chain` holding `rules` (argument tuples)."""
    return [rule_line("-A", chain, rule) for rule in rules]


def mapping_lines(
    current: Sequence[str],
    add: Sequence[str] | None = None,
    remove: tuple[str, tuple[int, int, str]] | None = None,
) -> list[str]:
    """The port-mapping chain's lines after adding rule `add` (argument tuple; kept once,
    by its namespace IP and mapping) and removing the rules keyed `remove`; lines of the
    chain that are no port mapping of ours are dropped."""
    lines = [line for line in current if parsed_key(line) not in (None, remove)]
    if add is not None:
        new = rule_line("-A", NAT_CHAIN, add)
        if parsed_key(new) not in {parsed_key(line) for line in lines}:
            lines.append(new)
    return lines
