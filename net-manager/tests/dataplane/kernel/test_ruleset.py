"""The kernel plan and its nft script, without root: which service IPs the kernel
serves, for which callers, and that the script only ever names our own table."""

from __future__ import annotations

import re

import pytest

from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.kernel.ruleset import TABLE, departed, plan, render_delete

HERE, THERE = "198.18.0.1", "198.18.0.2"
A = Endpoint("X.d.a.d", 0, "10.16.0.2", "fc00::2", "10.30.0.2", "fdff::2", HERE, 50103)
B = Endpoint("X.d.b.d", 0, "10.16.0.3", "fc00::3", "10.30.0.3", "fdff::3", HERE, 50103)
C = Endpoint("X.d.b.d", 1, "10.16.0.4", "fc00::4", "10.30.0.4", "fdff::4", HERE, 50103)
FAR = Endpoint("X.d.b.d", 2, "10.16.0.66", "fc00::66", "10.30.0.9", "fdff::9", THERE, 50103)
V4_ONLY = Endpoint("X.d.c.d", 0, "10.16.0.5", "", "10.30.0.5", "", HERE, 50103)


def served(p, service_ip):
    found = [s for s in p.services if s.service_ip == service_ip]
    return found[0] if found else None


def test_rr_with_every_instance_here_rotates_over_them_in_table_order():
    p = plan([ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (C, B))], [A, B, C], HERE,
             bridge="oak-br0")  # fmt: skip
    v4, v6 = served(p, "10.30.1.30"), served(p, "fdff:2000::1e")
    assert v4.targets == ("10.16.0.4", "10.16.0.3") and v4.policy == "RR"
    assert v6.targets == ("fc00::4", "fc00::3") and v6.version == 6
    assert v4.job_names == ("X.d.b.d",)
    script = p.render()
    assert "dnat ip to numgen inc mod 2 map { 0 : 10.16.0.4, 1 : 10.16.0.3 }" in script
    assert "dnat ip6 to numgen inc mod 2 map { 0 : fc00::4, 1 : fc00::3 }" in script


def test_rr_with_an_instance_elsewhere_stays_with_the_tun():
    p = plan([ServiceEntry("10.30.1.30", "", "RR", (B, FAR))], [A, B], HERE, bridge="oak-br0")
    assert p.services == ()
    assert p.skipped == {"10.30.1.30": "an instance on a node without the kernel tunnel"}
    assert "10.30.1.30" not in p.render()


def test_closest_takes_the_instances_here_and_leaves_remote_only_ones():
    p = plan(
        [
            ServiceEntry("10.30.1.31", "", "Closest", (FAR, B)),
            ServiceEntry("10.30.1.32", "", "Closest", (FAR,)),
        ],
        [A, B],
        HERE,
        bridge="oak-br0",
    )
    assert served(p, "10.30.1.31").targets == ("10.16.0.3",)
    assert "dnat ip to 10.16.0.3" in p.render()
    assert p.skipped == {"10.30.1.32": "closest instance on a node without the kernel tunnel"}


def test_instance_ips_map_one_to_one_when_here():
    entries = [ServiceEntry(e.instance_ip, e.instance_ip_v6, "instance_ip", (e,)) for e in (B, FAR)]
    entries.append(ServiceEntry("10.30.0.4", "", "InstanceNumber", (C,)))  # upstream's name
    p = plan(entries, [A, B, C], HERE, bridge="oak-br0")
    assert served(p, "10.30.0.3").targets == ("10.16.0.3",)
    assert served(p, "fdff::3").targets == ("fc00::3",)
    assert served(p, "10.30.0.4").policy == "instance_ip"
    assert set(p.skipped) == {"10.30.0.9", "fdff::9"}


def test_callers_are_local_instances_with_an_instance_ip_of_that_family():
    no_instance_ip = Endpoint("X.d.n.d", 0, "10.16.0.6", "fc00::6", "", "", HERE, 50103)
    p = plan([], [A, V4_ONLY, no_instance_ip], HERE, bridge="oak-br0")
    assert dict(p.callers[4]) == {"10.16.0.2": "10.30.0.2", "10.16.0.5": "10.30.0.5"}
    assert dict(p.callers[6]) == {"fc00::2": "fdff::2"}
    script = p.render()
    assert "10.16.0.2 : 10.30.0.2" in script and "fc00::6" not in script


def test_a_family_without_instances_is_not_served():
    p = plan([ServiceEntry("10.30.1.33", "fdff:2000::21", "RR", (V4_ONLY,))], [A, V4_ONLY],
             HERE, bridge="oak-br0")  # fmt: skip
    assert served(p, "10.30.1.33").targets == ("10.16.0.5",)
    assert p.skipped == {"fdff:2000::21": "no instance of this family"}


def test_bad_entries_are_skipped_never_raised():
    bad_instance = Endpoint("X.d.z.d", 0, "not-an-ip", "10.16.0.9", "x", "", HERE, 50103)
    p = plan(
        [
            ServiceEntry("10.30.1.34", "", "Maglev", (B,)),
            ServiceEntry("nonsense", "10.30.1.35", "RR", (B,)),
            ServiceEntry("10.30.1.36", "", "RR", (bad_instance,)),
            ServiceEntry("10.30.1.37", "", "RR", (B,)),
            ServiceEntry("10.30.1.37", "", "RR", (C,)),
        ],
        [B, C, bad_instance],
        HERE,
        bridge="oak-br0",
    )
    assert "Maglev" in p.skipped["10.30.1.34"]
    assert p.skipped["nonsense"] == "not an IPv4 address"
    assert p.skipped["10.30.1.35"] == "not an IPv6 address"
    assert p.skipped["10.30.1.36"] == "no instance of this family"
    assert p.skipped["10.30.1.37"] == "listed twice"
    assert served(p, "10.30.1.37").targets == ("10.16.0.3",)  # the first listing counts


def test_addresses_are_canonical_in_the_script():
    loud = Endpoint("X.d.b.d", 0, "10.16.0.3", "FC00:0:0::3", "10.30.0.3", "FDFF::3", HERE, 1)
    p = plan([ServiceEntry("10.30.1.30", "FDFF:2000:0::1E", "RR", (loud,))], [loud], HERE,
             bridge="oak-br0")  # fmt: skip
    script = p.render()
    assert "fdff:2000::1e" in script and "fc00::3 : fdff::3" in script
    assert not re.search(r"[A-F]{2}", script.replace("FAMILY", ""))


def test_the_bridge_must_be_an_interface_name():
    with pytest.raises(ValueError, match="interface name"):
        plan([], [], HERE, bridge='br0" accept; #')


def test_the_script_replaces_our_table_and_names_no_other():
    p = plan([ServiceEntry("10.30.1.30", "", "RR", (B,))], [A, B], HERE, bridge="oak-br0")
    script = p.render()
    first = script.splitlines()[:3]
    assert first == [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    tables = re.findall(r"table (\S+) (\S+)", script)
    assert set(tables) == {("inet", TABLE)}
    assert 'iifname != "oak-br0" return' in script
    assert render_delete() == f"table inet {TABLE}\ndelete table inet {TABLE}\n"


def test_the_same_table_renders_the_same_script():
    entries = [
        ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (B, C)),
        ServiceEntry("10.30.0.3", "fdff::3", "instance_ip", (B,)),
    ]
    one = plan(entries, [A, B, C], HERE, bridge="oak-br0").render()
    two = plan(list(reversed(entries)), [C, B, A], HERE, bridge="oak-br0").render()
    assert one == two


def test_jobs_of_names_the_jobs_behind_a_service_ip():
    p = plan([ServiceEntry("10.30.1.30", "", "RR", (A, B))], [A, B], HERE, bridge="oak-br0")
    assert p.jobs_of("10.30.1.30") == ("X.d.a.d", "X.d.b.d")
    assert p.jobs_of("10.30.9.9") == ()
    assert p.service_ips() == {"10.30.1.30"}


def test_an_empty_table_renders_no_dnat():
    script = plan([], [], HERE, bridge="oak-br0").render()
    assert "dnat ip" not in script and "vmap" not in script
    assert "snat ip to ip saddr map @instance_ip_v4" in script  # harmless without services


def test_departed_names_targets_no_endpoint_has_any_more():
    old = plan([ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (B, C))], [A, B, C], HERE,
               bridge="oak-br0")  # fmt: skip
    assert departed(old, [ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (B, C))]) == []
    gone = departed(old, [ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (B,))])
    assert gone == [(4, "10.30.1.30", "10.16.0.4"), (6, "fdff:2000::1e", "fc00::4")]
    # C moved to the TUN's care (an instance elsewhere joined): still there, not departed
    mixed = [ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (B, C, FAR))]
    assert departed(old, mixed) == []
