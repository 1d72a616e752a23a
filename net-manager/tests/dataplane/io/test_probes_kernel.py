"""Two real data-plane processes in kernel mode (`--vxlan`) find each other through their
RTT probes: node 1's table names node 2, node 2's names nobody, and both end with the
other's capabilities `CAP_VXLAN | CAP_VXLAN_PEER` in their Counters reports (what the
kernel backend reads); a process without `--vxlan` gets neither bit."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from net_manager.dataplane.backend import DataPlaneOptions
from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.io.probes import CAP_VXLAN, CAP_VXLAN_PEER
from net_manager.dataplane.supervisor import DataPlaneSupervisor
from testsupport import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "integration-tests"))
from testbed import Testbed, two_nodes, unique_prefix  # noqa: E402

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
]

N1, N2, PORT = "198.18.0.1", "198.18.0.2", 50103
C2 = Endpoint("X.d.s.d", 0, "10.16.0.66", "fc00::102", "10.30.0.6", "fdff::6", N2, PORT)
BOTH = CAP_VXLAN | CAP_VXLAN_PEER


def start(bed: Testbed, node: str, vxlan: bool) -> DataPlaneSupervisor:
    options = DataPlaneOptions(
        tun_name=None,
        tun_v4_cidr="10.19.1.254/12",
        tun_v6_cidr="fcef::dead:beef/7",
        mtu=1450,
        port=PORT,
        on_resolve=lambda ip, reply: reply(False),
        on_used=lambda jobs: None,
        netns_exec=bed.netns_exec(node),
        vxlan=vxlan,
    )
    supervisor = DataPlaneSupervisor(options)
    supervisor.start()
    assert supervisor.wait_ready(15), f"data plane in {node} did not start"
    return supervisor


@pytest.mark.parametrize("n2_vxlan", [True, False], ids=["kernel-peer", "tun-peer"])
def test_kernel_mode_processes_verify_each_other(n2_vxlan: bool) -> None:
    with Testbed(two_nodes(unique_prefix())) as bed:
        planes = [start(bed, "n1", True), start(bed, "n2", n2_vxlan)]
        try:
            one, two = planes
            one.push_snapshot([ServiceEntry("10.30.1.30", "", "RR", (C2,))], [], N1)
            two.push_snapshot([], [], N2)
            if n2_vxlan:
                wait_until(lambda: one.peer_capabilities.get(N2, 0) & BOTH == BOTH, 20,
                           message="n1 sees n2 as a kernel peer that admits it")  # fmt: skip
                wait_until(lambda: two.peer_capabilities.get(N1, 0) & CAP_VXLAN, 20,
                           message="n2 probed n1 back")  # fmt: skip
            else:
                wait_until(lambda: N2 in one.peer_capabilities, 20, message="n2 echoes")
                assert one.peer_capabilities[N2] & BOTH == 0
                assert N1 not in two.peer_capabilities  # a TUN node never probes back
        finally:
            for plane in planes:
                plane.stop()
