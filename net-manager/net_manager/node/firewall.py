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
