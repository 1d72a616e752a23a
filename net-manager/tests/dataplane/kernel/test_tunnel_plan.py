"""The kernel tunnel without root: the plan over kernel peers (table-driven, every
policy against every placement), the tunnel spec derived from the table and the peers,
the rules rendered for it, and the backend's order of tunnel and rule changes."""

from __future__ import annotations

import pytest

from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.io.probes import CAP_GSO, CAP_VXLAN, CAP_VXLAN_PEER
from net_manager.dataplane.kernel.backend import KernelBackend
from net_manager.dataplane.kernel.nft import NftError
from net_manager.dataplane.kernel.ruleset import plan, render_delete, tunnel_spec
from net_manager.node.errors import KernelError
from net_manager.node.tunnel import (
    MAIN_TABLE,
    TunnelPeer,
    TunnelSpec,
    link_local_of,
    mac_of,
    mark_of,
    port_of,
    subnet_of,
    usable_node_ip,
)

HERE, KPEER, UPSTREAM, SLOW = "198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.4"
A = Endpoint("X.d.a.d", 0, "10.16.0.2", "fc00::2", "10.30.0.2", "fdff::2", HERE, 50103)
LOC = Endpoint("X.d.b.d", 0, "10.16.0.3", "fc00::3", "10.30.0.3", "fdff::3", HERE, 50103)
KER = Endpoint("X.d.b.d", 1, "10.16.0.66", "fc00::166", "10.30.0.66", "fdff::66", KPEER, 50103)
KER2 = Endpoint("X.d.b.d", 4, "10.16.0.68", "fc00::168", "10.30.0.68", "fdff::68", KPEER, 50103)
UPS = Endpoint("X.d.b.d", 2, "10.16.0.130", "fc00::230", "10.30.0.9", "fdff::9", UPSTREAM, 50103)
FAR = Endpoint("X.d.b.d", 3, "10.16.0.194", "fc00::330", "10.30.0.10", "fdff::a", SLOW, 50103)
TUNNEL = TunnelSpec(HERE, 50104, 1450, (TunnelPeer(KPEER), TunnelPeer(SLOW)))
NO_TUNNEL_RR = "an instance on a node without the kernel tunnel"
NO_TUNNEL_CLOSEST = "closest instance on a node without the kernel tunnel"
NO_TUNNEL_IP = "instance on a node without the kernel tunnel"

# (name, policy, endpoints, kernel peers, rtt) -> targets (v4) or why the TUN keeps it
CASES = [
    ("rr all local", "RR", (LOC,), {KPEER}, {}, ("10.16.0.3",)),
    ("rr all on a kernel peer", "RR", (KER, KER2), {KPEER}, {}, ("10.16.0.66", "10.16.0.68")),
    ("rr local and kernel peer", "RR", (LOC, KER), {KPEER}, {}, ("10.16.0.3", "10.16.0.66")),
    ("rr with an upstream node", "RR", (KER, UPS), {KPEER}, {}, NO_TUNNEL_RR),
    ("rr local and upstream", "RR", (LOC, UPS), {KPEER}, {}, NO_TUNNEL_RR),
    ("rr peer not admitting us", "RR", (KER,), set(), {}, NO_TUNNEL_RR),
    ("closest local wins", "Closest", (KER, LOC), {KPEER}, {KPEER: 0.001}, ("10.16.0.3",)),
    ("closest by rtt", "Closest", (KER, FAR), {KPEER, SLOW}, {KPEER: 0.001, SLOW: 0.01},
     ("10.16.0.66",)),
    ("closest by rtt, other one", "Closest", (KER, FAR), {KPEER, SLOW},
     {KPEER: 0.02, SLOW: 0.01}, ("10.16.0.194",)),
    ("closest ties rotate", "Closest", (KER, KER2), {KPEER}, {KPEER: 0.001},
     ("10.16.0.66", "10.16.0.68")),
    ("closest best is upstream", "Closest", (KER, UPS), {KPEER}, {KPEER: 0.02, UPSTREAM: 0.01},
     NO_TUNNEL_CLOSEST),
    ("closest upstream unmeasured", "Closest", (KER, UPS), {KPEER}, {KPEER: 0.02},
     ("10.16.0.66",)),
    ("closest no rtt: all, like rr", "Closest", (KER, FAR), {KPEER, SLOW}, {},
     ("10.16.0.66", "10.16.0.194")),
    ("closest no rtt with upstream", "Closest", (KER, UPS), {KPEER}, {}, NO_TUNNEL_CLOSEST),
    ("instance ip here", "instance_ip", (LOC,), set(), {}, ("10.16.0.3",)),
    ("instance ip on kernel peer", "instance_ip", (KER,), {KPEER}, {}, ("10.16.0.66",)),
    ("instance ip upstream", "instance_ip", (UPS,), {KPEER}, {}, NO_TUNNEL_IP),
    ("instance ip twice", "instance_ip", (KER, KER2), {KPEER}, {},
     "instance IP with more than one instance"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "endpoints", "peers", "rtt", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_plan_over_kernel_peers(policy, endpoints, peers, rtt, expected):
    entry = ServiceEntry("10.30.1.30", "fdff:2000::1e", policy, endpoints)
    p = plan([entry], [A, LOC], HERE, bridge="oak-br0", kernel_peers=peers, rtt=rtt,
             tunnel=TUNNEL)  # fmt: skip
    served = {s.service_ip: s for s in p.services}
    if isinstance(expected, str):
        assert p.skipped == {"10.30.1.30": expected, "fdff:2000::1e": expected}
        assert not served
    else:
        assert served["10.30.1.30"].targets == expected
        v6 = {e.namespace_ip: e.namespace_ip_v6 for e in endpoints}
        assert served["fdff:2000::1e"].targets == tuple(v6[t] for t in expected)


def test_without_a_tunnel_kernel_peers_do_not_count():
    entry = ServiceEntry("10.30.1.30", "", "RR", (KER,))
    p = plan([entry], [A], HERE, bridge="oak-br0", kernel_peers={KPEER})
    assert p.skipped == {"10.30.1.30": NO_TUNNEL_RR}
    assert "tunnel_in" not in p.render()


def test_tunnel_spec_names_every_peer_and_the_subnets_the_table_knows():
    services = [
        ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (KER, KER2, LOC, UPS)),
        ServiceEntry("10.30.0.66", "", "instance_ip", (KER,)),
    ]
    spec = tunnel_spec(services, [KPEER, SLOW, HERE], HERE, port=50104, mtu=1450)
    assert spec.peers == (
        TunnelPeer(KPEER, ("10.16.0.64/26", "fc00::100/120")),
        TunnelPeer(SLOW, ()),  # a caller's node: replies only
    )
    assert spec.routes() == {
        ("10.16.0.64/26", KPEER, MAIN_TABLE),
        ("fc00::100/120", link_local_of(mac_of(KPEER)), MAIN_TABLE),
        ("0.0.0.0/0", KPEER, mark_of(KPEER)),
        ("::/0", link_local_of(mac_of(KPEER)), mark_of(KPEER)),
        ("0.0.0.0/0", SLOW, mark_of(SLOW)),
        ("::/0", link_local_of(mac_of(SLOW)), mark_of(SLOW)),
    }
    assert spec.fdb() == {(mac_of(KPEER), KPEER), (mac_of(SLOW), SLOW)}
    assert spec.rules() == {(4, mark_of(KPEER)), (6, mark_of(KPEER)), (4, mark_of(SLOW)),
                            (6, mark_of(SLOW))}  # fmt: skip
    assert spec.mac == "02:00:c6:12:00:01"


def test_derived_names():
    assert mac_of("198.18.0.2") == "02:00:c6:12:00:02"
    assert mark_of("198.18.0.2") == 0xC6120002
    assert link_local_of("02:00:c6:12:00:02") == "fe80::c6ff:fe12:2"
    assert port_of(50103) == 50104
    with pytest.raises(ValueError):
        port_of(65535)
    assert subnet_of("10.16.0.66") == "10.16.0.64/26"
    assert subnet_of("fc00::166") == "fc00::100/120"
    assert subnet_of("nonsense") is None
    assert usable_node_ip("198.18.0.2")
    for bad in ("fd00::1", "0.0.0.1", "127.0.0.1", "224.0.0.1", "", "x"):
        assert not usable_node_ip(bad)


def test_the_tunnel_rules_guard_the_port_and_route_replies_by_mark():
    entry = ServiceEntry("10.30.1.30", "", "RR", (KER,))
    script = plan([entry], [A], HERE, bridge="oak-br0", kernel_peers={KPEER},
                  tunnel=TUNNEL).render()  # fmt: skip
    assert "udp dport 50104 ip saddr != @tunnel_peers_v4 counter drop" in script
    assert "elements = { 198.18.0.2, 198.18.0.4 }" in script
    assert "02:00:c6:12:00:02 : 0xc6120002" in script
    assert 'iifname "oak-vx0" ct state new ct mark set ether saddr map @peer_marks' in script
    assert "ct direction reply ct mark @tunnel_marks meta mark set ct mark" in script
    assert 'oifname "oak-vx0" counter drop' in script
    assert "dnat ip to 10.16.0.66" in script


# ------------------------------------------------------------ the backend's order


class FakeNft:
    def __init__(self, log: list) -> None:
        self.log = log
        self.refuse = False

    def apply(self, script: str, *, check_only: bool = False) -> None:
        if self.refuse and script != render_delete():
            raise NftError("refused")
        targets = sorted(t for t in ("10.16.0.66", "10.16.0.194") if f"to {t}" in script)
        self.log.append(("nft", tuple(targets)))

    def delete_table(self) -> None:
        self.log.append(("nft", "delete"))

    def table(self) -> list[dict]:
        return []


class Inner:
    def __init__(self) -> None:
        self.rtt: dict[str, float] = {}
        self.peer_capabilities: dict[str, int] = {}

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def push_snapshot(self, services, local_instances, node_ip) -> None: ...

    def counters(self) -> dict[str, int | float]:
        return {}


def make(refuse_tunnel: bool = False):
    log: list = []
    inner = Inner()

    def on_tunnel(spec):
        if refuse_tunnel and spec is not None:
            raise KernelError("no vxlan here")
        log.append(("tunnel", None if spec is None else tuple(p.node_ip for p in spec.peers)))

    backend = KernelBackend(inner, FakeNft(log), bridge="oak-br0", on_used=lambda jobs: None,
                            tunnel_port=50104, on_tunnel=on_tunnel)  # fmt: skip
    return backend, inner, log


TABLE = [ServiceEntry("10.30.1.30", "", "RR", (KER,)), ServiceEntry("10.30.1.31", "", "RR", (FAR,))]


def test_the_device_gets_a_peer_before_the_rules_use_it_and_loses_it_after():
    backend, inner, log = make()
    backend.push_snapshot(TABLE, [A], HERE)
    assert log == [("tunnel", ()), ("nft", ())]  # the device, no peers yet
    inner.peer_capabilities = {KPEER: CAP_VXLAN}  # verified, but does not admit us yet
    backend._run_once()
    assert log[2:] == [("tunnel", (KPEER,)), ("nft", ())]
    inner.peer_capabilities = {KPEER: CAP_VXLAN | CAP_VXLAN_PEER | CAP_GSO}
    backend._run_once()
    assert log[4:] == [("nft", ("10.16.0.66",))]
    inner.peer_capabilities = {SLOW: CAP_VXLAN | CAP_VXLAN_PEER}  # KPEER gone, SLOW new
    backend._run_once()
    assert log[5:] == [
        ("tunnel", (KPEER, SLOW)),  # both while the old rules still send to KPEER
        ("nft", ("10.16.0.194",)),
        ("tunnel", (SLOW,)),
    ]
    backend.stop()
    assert log[-1] == ("tunnel", None)
    assert backend.counters()["kernel_tunnel_peers"] == 0


def test_a_refused_tunnel_leaves_remote_instances_to_the_tun():
    backend, inner, log = make(refuse_tunnel=True)
    inner.peer_capabilities = {KPEER: CAP_VXLAN | CAP_VXLAN_PEER}
    backend.push_snapshot(TABLE, [A], HERE)
    assert log == [("nft", ())]
    assert backend.plan is not None and "10.30.1.30" in backend.plan.skipped
    assert backend.counters()["kernel_tunnel_errors"] >= 1
    assert "tunnel_in" not in (backend._applied or "")


def test_no_tunnel_without_a_port_or_for_an_ipv6_node():
    log: list = []
    inner = Inner()
    inner.peer_capabilities = {KPEER: CAP_VXLAN | CAP_VXLAN_PEER}
    backend = KernelBackend(inner, FakeNft(log), bridge="oak-br0", on_used=lambda jobs: None)
    backend.push_snapshot(TABLE, [A], HERE)
    assert log == [("nft", ())]
    backend, inner, log = make()
    inner.peer_capabilities = {KPEER: CAP_VXLAN | CAP_VXLAN_PEER}
    backend.push_snapshot(TABLE, [A], "fd00::1")
    assert log == [("nft", ())]
