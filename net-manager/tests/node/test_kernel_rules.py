"""The pure parts of the node layer: rule text, its parsing, validation (no root)."""

from __future__ import annotations

import os

import pytest

from net_manager.node import firewall, validate
from net_manager.node.firewall import (
    NAT_CHAIN,
    base_rule_plan,
    parse_port_mapping_rule,
    port_mapping_spec,
)
from net_manager.node.kernel import NamespaceNotFound, netns_path_of_pid
from net_manager.node.netlink import eui64_link_local
from net_manager.node.portmap import PortMapping

WEB = PortMapping(8080, 80, "tcp")
# Lines as `iptables -t nat -S` / `ip6tables -t nat -S` print them.
V4_LINE = (
    '-A OAKESTRA -p tcp -m tcp --dport 8080 -m comment --comment "oak:10.16.0.2" '
    "-j DNAT --to-destination 10.16.0.2:80"
)
V6_LINE = (
    '-A OAKESTRA -p udp -m udp --dport 9000 -m comment --comment "oak:10.16.0.2" '
    "-j DNAT --to-destination [fc00::2]:9001"
)


def test_base_rules_v4():
    plan = base_rule_plan(4, "oak-br0", "oak-tun0", "10.16.0.0/26", "10.16.0.0/12")

    assert plan.chains["filter"]["OAK-FORWARD"] == [
        ("-i", "oak-br0", "-j", "ACCEPT"),
        ("-i", "oak-tun0", "-o", "oak-br0", "-j", "ACCEPT"),
        ("-i", "oak-vx0", "-o", "oak-br0", "-j", "ACCEPT"),
        (
            "-o",
            "oak-br0",
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED,DNAT",
            "-j",
            "ACCEPT",
        ),
        ("-o", "oak-br0", "-j", "DROP"),
    ]
    assert plan.chains["nat"]["OAK-POSTROUTING"] == [
        ("-o", "oak-br0", "-j", "RETURN"),
        ("-o", "oak-tun0", "-j", "RETURN"),
        ("-d", "10.16.0.0/12", "-j", "RETURN"),
        ("-s", "10.16.0.0/26", "-j", "MASQUERADE"),
    ]
    jumps = {jump.builtin: jump for jump in plan.jumps["nat"]}
    assert jumps["PREROUTING"].chain == NAT_CHAIN
    assert jumps["PREROUTING"].match == (
        "!",
        "-i",
        "oak-br0",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
    )
    assert jumps["OUTPUT"].match == (
        "!",
        "-d",
        "127.0.0.0/8",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
    )
    assert jumps["POSTROUTING"].chain == "OAK-POSTROUTING"
    assert [(j.builtin, j.chain) for j in plan.jumps["filter"]] == [("FORWARD", "OAK-FORWARD")]


def test_base_rules_v6_use_v6_networks():
    plan = base_rule_plan(6, "oak-br0", "oak-tun0", "fc00::/120", "fc00::/7")

    assert plan.chains["nat"]["OAK-POSTROUTING"][-1] == ("-s", "fc00::/120", "-j", "MASQUERADE")
    output = next(j for j in plan.jumps["nat"] if j.builtin == "OUTPUT")
    assert output.match[:3] == ("!", "-d", "::1/128")


@pytest.mark.parametrize(
    "family, subnet, reason",
    [(4, "10.16.0.1/26", "node subnet"), (6, "10.16.0.0/26", "IPv6"), (4, "bogus", "node subnet")],
)
def test_base_rules_reject_bad_subnets(family, subnet, reason):
    with pytest.raises(ValueError, match=reason):
        base_rule_plan(family, "oak-br0", "oak-tun0", subnet, "10.16.0.0/12")


def test_port_mapping_spec_v4_and_v6():
    assert port_mapping_spec(WEB, "10.16.0.2", "10.16.0.2") == (
        "-p", "tcp", "--dport", "8080", "-m", "comment", "--comment", "oak:10.16.0.2",
        "-j", "DNAT", "--to-destination", "10.16.0.2:80",
    )  # fmt: skip
    assert port_mapping_spec(WEB, "10.16.0.2", "fc00::2")[-1] == "[fc00::2]:80"


@pytest.mark.parametrize(
    "mapping, reason",
    [
        (PortMapping(0, 80, "tcp"), "port 0"),
        (PortMapping(80, 65536, "tcp"), "port 65536"),
        (PortMapping(80, 80, "sctp"), "protocol"),
        (PortMapping("80", 80, "tcp"), "port '80'"),
        ("8080:80", "needs host_port"),
    ],
)
def test_port_mapping_spec_rejects_bad_mappings(mapping, reason):
    with pytest.raises(ValueError, match=reason):
        port_mapping_spec(mapping, "10.16.0.2", "10.16.0.2")


def test_parse_port_mapping_rules_as_iptables_prints_them():
    assert parse_port_mapping_rule(V4_LINE) == ("10.16.0.2", WEB)
    assert parse_port_mapping_rule(V6_LINE) == ("10.16.0.2", PortMapping(9000, 9001, "udp"))


def test_spec_and_parse_round_trip():
    line = " ".join(["-A", NAT_CHAIN, *port_mapping_spec(WEB, "10.16.0.7", "fc00::7")])
    assert parse_port_mapping_rule(line) == ("10.16.0.7", WEB)


@pytest.mark.parametrize(
    "line",
    [
        "-N OAKESTRA",
        "-A OAKESTRA -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:80",
        '-A OAKESTRA -p tcp -m comment --comment "someone else" -j DNAT --to-destination 1.2.3.4:1',
        '-A OAKESTRA -p tcp -m tcp --dport 80 -m comment --comment "oak:x" -j ACCEPT',
        '-A OAKESTRA -p tcp --dport x -m comment --comment "oak:1" -j DNAT --to-destination a:b',
        '-A OAKESTRA -m comment --comment "unterminated',
    ],
)
def test_lines_that_are_not_our_port_mappings_parse_to_none(line):
    assert parse_port_mapping_rule(line) is None


def test_jumps_to_our_chains_and_their_delete_commands():
    listing = [
        "-P PREROUTING ACCEPT",
        "-N OAKESTRA",
        "-A PREROUTING ! -i oak-br0 -m addrtype --dst-type LOCAL -j OAKESTRA",
        "-A PREROUTING -j DOCKER",
        "-A OUTPUT -g OAKESTRA",
        V4_LINE,
    ]
    jumps = firewall.jumps_to(listing, ("OAKESTRA",))
    assert jumps == [listing[2], listing[4]]
    assert firewall.as_delete(jumps[0]).startswith("-D PREROUTING ! -i oak-br0")
    assert firewall.chains_in(listing) == {"OAKESTRA"}
    assert firewall.rules_of(listing, "OAKESTRA") == [V4_LINE]


def test_restore_lines_quote_only_what_needs_it():
    assert firewall.rule_line("-A", "X", ("!", "-i", "oak-br0", "--to", "[fc00::2]:80")) == (
        "-A X ! -i oak-br0 --to [fc00::2]:80"
    )
    assert firewall.rule_line("-A", "X", ("--comment", "two words")) == '-A X --comment "two words"'
    with pytest.raises(ValueError, match="iptables-restore"):
        firewall.rule_line("-A", "X", ("--comment", 'a "quote"'))


def test_eui64_link_local_matches_the_kernel():
    # Observed: a bridge with MAC 52:ee:b0:be:66:85 got fe80::50ee:b0ff:febe:6685.
    assert eui64_link_local("52:ee:b0:be:66:85") == "fe80::50ee:b0ff:febe:6685"
    with pytest.raises(ValueError, match="MAC"):
        eui64_link_local("52:ee")


def test_netns_path_of_pid():
    assert netns_path_of_pid(os.getpid()) == f"/proc/{os.getpid()}/ns/net"
    with pytest.raises(NamespaceNotFound, match="process 4194999 is gone"):
        netns_path_of_pid(4194999)  # above the kernel's pid_max limit, never a real pid
    for bad in (0, -3, True, "12"):
        with pytest.raises(ValueError, match="pid"):
            netns_path_of_pid(bad)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("br0", "must start with 'oak-'"),
        ("oak-0123456789ab", "1-15"),
        ("oak/x", "1-15"),
        ("", "1-15"),
    ],
)
def test_own_interface_names_are_checked(name, reason):
    with pytest.raises(ValueError, match=reason):
        validate.check_own_name(name)


SAVE = (
    """# Generated by iptables-save
*nat
:PREROUTING ACCEPT [3:180]
:OAKESTRA - [0:0]
:OTHER - [0:0]
-A PREROUTING -j OTHER
-A PREROUTING ! -i oak-br0 -m addrtype --dst-type LOCAL -j OAKESTRA
"""
    + V4_LINE
    + """
-A OAKESTRA -j RETURN
COMMIT
"""
)


def test_iptables_save_is_read_per_table_without_counters():
    tables = firewall.tables_of(SAVE)
    assert tables["nat"][:3] == [":PREROUTING ACCEPT", ":OAKESTRA -", ":OTHER -"]
    assert firewall.declared_chains(tables["nat"]) == {"PREROUTING", "OAKESTRA", "OTHER"}
    assert firewall.own_part(tables)["nat"] == [
        "OAKESTRA",
        V4_LINE,
        "-A OAKESTRA -j RETURN",
        "-A PREROUTING ! -i oak-br0 -m addrtype --dst-type LOCAL -j OAKESTRA",
    ]


def test_one_restore_script_replaces_our_chains_and_moves_the_jumps_to_the_top():
    plan = base_rule_plan(4, "oak-br0", "oak-tun0", "10.16.0.0/26", "10.16.0.0/12")
    chains = {
        table: {chain: firewall.chain_rules(chain, rules) for chain, rules in by_chain.items()}
        for table, by_chain in plan.chains.items()
    }
    chains["nat"][NAT_CHAIN] = None  # exists: neither declared (that would flush it) nor touched
    script = firewall.restore_script(firewall.tables_of(SAVE), chains, plan.jumps)
    nat = script[script.index("*nat") :]
    assert nat.startswith("*nat\n:OAK-POSTROUTING - [0:0]\n-D PREROUTING ! -i oak-br0")
    assert ":OAKESTRA" not in nat and "-A OAKESTRA" not in nat
    assert "-I PREROUTING 1 ! -i oak-br0 -m addrtype --dst-type LOCAL -j OAKESTRA\n" in nat
    assert "-A OAK-POSTROUTING -s 10.16.0.0/26 -j MASQUERADE\n" in nat
    assert nat.endswith("COMMIT\n") and script.count("COMMIT") == 2  # filter and nat
    assert script.startswith("*filter\n:OAK-FORWARD - [0:0]\n-A OAK-FORWARD -i oak-br0 -j ACCEPT")


def test_mapping_lines_add_once_remove_by_key_and_drop_foreign_rules():
    current = [V4_LINE, "-A OAKESTRA -j RETURN"]
    spec = port_mapping_spec(PortMapping(9000, 90, "udp"), "10.16.0.3", "10.16.0.3")
    added = firewall.mapping_lines(current, add=spec)
    assert added[0] == V4_LINE and len(added) == 2 and "--dport 9000" in added[1]
    assert firewall.mapping_lines(added, add=spec) == added  # already there: unchanged
    assert firewall.mapping_lines(added, remove=("10.16.0.2", (8080, 80, "tcp"))) == added[1:]
