"""Reconciler with a fake kernel and explicit times: scheduling, sweeping, failures."""

from __future__ import annotations

import logging
import threading

import pytest
from nm_fakes import FakeKernel

from net_manager.node.kernel import TUN, KernelError, NamespaceNotFound
from net_manager.node.portmap import PortMapping
from net_manager.node.reconciler import (
    RETRY_INITIAL,
    ContainerSpec,
    DesiredState,
    NodeSpec,
    Reconciler,
    SyncError,
    container_addressing,
)
from testsupport import wait_until

NODE = NodeSpec(
    bridge="oak-br0",
    bridge_v4_cidr="10.16.0.1/26",
    bridge_v6_cidr="fc00::1/120",
    subnet_v4="10.16.0.0/26",
    subnet_v6="fc00::/120",
    mtu=1450,
    tun=TUN,
)
WEB = PortMapping(8080, 80, "tcp")


def container(n: int, *mappings: PortMapping) -> ContainerSpec:
    return ContainerSpec(
        key=f"app.ns.svc.ns.{n}",
        host_veth=f"oak-h{n}",
        peer_veth=f"oak-c{n}",
        netns_path=f"/proc/{1000 + n}/ns/net",
        namespace_ip=f"10.16.0.{n + 1}",
        namespace_ip_v6=f"fc00::{n + 1:x}",
        port_mappings=mappings,
    )


@pytest.fixture
def kernel():
    return FakeKernel()


def reconciler_for(kernel: FakeKernel, *containers: ContainerSpec, **kwargs) -> Reconciler:
    kernel.namespaces |= {c.netns_path for c in containers}
    return Reconciler(kernel, lambda: DesiredState(NODE, containers), **kwargs)


# ---- what a sync does ---------------------------------------------------------------


def test_sync_sets_up_the_node_then_each_container(kernel):
    reconciler = reconciler_for(kernel, container(1, WEB))

    reconciler.sync()

    assert kernel.sysctls
    assert kernel.bridges == {"oak-br0": ("10.16.0.1/26", "fc00::1/120", 1450)}
    assert kernel.base_rules == ("oak-br0", TUN, "10.16.0.0/26", "fc00::/120")
    assert kernel.veths == {"oak-h1": ("oak-c1", "oak-br0", 1450)}
    assert kernel.moved == {"oak-c1": ("/proc/1001/ns/net", "eth0")}
    assert kernel.interfaces == {
        "/proc/1001/ns/net": (
            "eth0",
            "10.16.0.2/26",
            "fc00::2/120",
            "10.16.0.1",
            "fc00::1",
            1450,
        )
    }
    assert kernel.mappings == {("10.16.0.2", WEB)}
    assert (reconciler.sync_count, reconciler.last_error) == (1, None)


def test_sync_without_a_node_does_nothing(kernel):
    kernel.links = {"oak-br0", "oak-h7"}
    reconciler = Reconciler(kernel, lambda: DesiredState(node=None, containers=()))

    reconciler.sync()

    assert kernel.calls == []
    assert kernel.links == {"oak-br0", "oak-h7"}


def test_sweep_deletes_unknown_links_and_mappings_but_keeps_desired_ones_and_the_tun(kernel):
    kernel.links = {"oak-br0", TUN, "oak-dp0", "oak-hold", "oak-cold", "eth9"}
    kernel.mappings = {
        ("10.16.0.2", WEB),
        ("10.16.0.9", WEB),
        ("10.16.0.2", PortMapping(8080, 81, "tcp")),
    }
    reconciler = reconciler_for(kernel, container(1, WEB), keep=(TUN, "oak-dp0"))

    reconciler.sync()

    assert kernel.links == {"oak-br0", TUN, "oak-dp0", "oak-h1", "eth9"}
    assert kernel.mappings == {("10.16.0.2", WEB)}


def test_public_sweep_reports_what_it_removed(kernel):
    kernel.links = {"oak-br0", TUN, "oak-hold"}
    kernel.mappings = {("10.16.0.9", WEB)}
    reconciler = Reconciler(kernel, lambda: DesiredState(node=None, containers=()))

    removed = reconciler.sweep()

    assert removed == ["oak-br0", "oak-hold", "port mapping 8080:80/tcp to 10.16.0.9"]
    assert kernel.links == {TUN}


def test_vanished_container_namespace_is_skipped_and_its_leftovers_swept(kernel, caplog):
    alive, dead = container(1), container(2, WEB)
    reconciler = reconciler_for(kernel, alive, dead)
    kernel.links.add(dead.host_veth)
    kernel.mappings.add((dead.namespace_ip, WEB))
    kernel.namespaces.discard(dead.netns_path)

    with caplog.at_level(logging.WARNING, logger="net_manager.node.reconciler"):
        reconciler.sync()
        reconciler.sync()

    assert reconciler.last_error is None
    assert kernel.links == {"oak-br0", "oak-h1"}
    assert kernel.mappings == set()
    assert ("ensure_veth", "oak-h2", "oak-c2", "oak-br0", 1450) not in kernel.calls
    gone = [r for r in caplog.records if "gone" in r.getMessage()]
    assert len(gone) == 1  # once, not on every sync


def test_namespace_vanishing_during_attach_counts_as_gone(kernel):
    reconciler = reconciler_for(kernel, container(1))
    kernel.fail["move_into_container"] = NamespaceNotFound("network namespace /proc/1001 gone")

    reconciler.sync()

    assert reconciler.last_error is None
    assert kernel.links == {"oak-br0"}  # the veth made before the move is swept


def test_one_failing_container_does_not_stop_the_others(kernel):
    broken, fine = container(1, WEB), container(2)
    reconciler = reconciler_for(kernel, broken, fine)
    kernel.fail["ensure_port_mapping"] = KernelError("iptables failed")

    with pytest.raises(SyncError, match=r"app\.ns\.svc\.ns\.1: iptables failed"):
        reconciler.sync()

    assert ("configure_container", fine.netns_path) == kernel.calls[-1][:2]
    assert kernel.links == {"oak-br0", "oak-h1", "oak-h2"}  # the broken one is kept
    assert reconciler.last_error.startswith("cannot configure 1 container(s)")
    assert reconciler.sync_count == 0


def test_a_node_failure_stops_the_sync(kernel):
    reconciler = reconciler_for(kernel, container(1))
    kernel.fail["ensure_bridge"] = KernelError(
        "cannot create bridge oak-br0: Operation not permitted"
    )

    with pytest.raises(KernelError, match="oak-br0"):
        reconciler.sync()

    assert "ensure_veth" not in kernel.names()
    assert "oak-br0" in reconciler.last_error


# ---- immediate changes --------------------------------------------------------------


def test_sync_container_sets_the_node_up_once_then_attaches(kernel):
    first, second = container(1, WEB), container(2)
    reconciler = reconciler_for(kernel, first, second)

    reconciler.sync_container(first)
    reconciler.sync_container(second)

    assert kernel.names().count("ensure_bridge") == 1
    assert kernel.links == {"oak-br0", "oak-h1", "oak-h2"}
    assert kernel.mappings == {("10.16.0.2", WEB)}


def test_sync_container_needs_the_node_and_raises_kernel_errors(kernel):
    no_node = Reconciler(kernel, lambda: DesiredState(node=None, containers=()))
    with pytest.raises(KernelError, match="not set up"):
        no_node.sync_container(container(1))

    reconciler = reconciler_for(kernel, container(1))
    kernel.namespaces.clear()
    with pytest.raises(NamespaceNotFound):
        reconciler.sync_container(container(1))


def test_sync_removed_deletes_mappings_and_both_veth_ends(kernel):
    spec = container(1, WEB)
    reconciler = reconciler_for(kernel, spec)
    reconciler.sync_container(spec)

    reconciler.sync_removed(spec)

    assert kernel.links == {"oak-br0"}
    assert kernel.mappings == set()
    assert ("delete_link", "oak-c1") in kernel.calls


def test_a_container_attached_during_a_sync_is_not_swept(kernel):
    """The snapshot read before the lock is stale; the sync must read it again."""
    old, new = container(1), container(2)
    kernel.namespaces |= {old.netns_path, new.netns_path}
    state = {"containers": (old,)}
    reads = []

    def desired() -> DesiredState:
        reads.append(state["containers"])
        if len(reads) == 1:  # another thread attaches `new` while we read
            state["containers"] = (old, new)
            attach = threading.Thread(target=reconciler.sync_container, args=(new,))
            attach.start()
            attach.join()
            return DesiredState(NODE, (old,))
        return DesiredState(NODE, state["containers"])

    reconciler = Reconciler(kernel, desired)
    reconciler.sync()

    assert "oak-h2" in kernel.links
    assert ("delete_link", "oak-h2") not in kernel.calls


# ---- scheduling ---------------------------------------------------------------------


def test_first_step_syncs_at_once_then_only_when_due(kernel):
    reconciler = reconciler_for(kernel, min_interval=0.2, max_interval=30.0)

    assert reconciler.run_pending(0.0) is True
    assert reconciler.run_pending(0.1) is False
    assert reconciler.run_pending(29.9) is False
    assert reconciler.run_pending(30.0) is True  # max_interval forces a sync
    assert reconciler.sync_count == 2


def test_a_burst_of_pokes_coalesces_into_one_sync_per_min_interval(kernel):
    reconciler = reconciler_for(kernel, min_interval=0.2, max_interval=30.0)
    reconciler.run_pending(0.0)

    for _ in range(10):
        reconciler.poke()
    assert reconciler.seconds_until_due(0.05) == pytest.approx(0.15)
    assert reconciler.run_pending(0.05) is False
    assert reconciler.run_pending(0.2) is True
    assert reconciler.run_pending(0.3) is False  # the burst is spent
    reconciler.poke()
    assert reconciler.run_pending(0.35) is False
    assert reconciler.run_pending(0.4) is True
    assert reconciler.sync_count == 3


def test_a_failed_sync_is_retried_with_growing_backoff(kernel):
    reconciler = reconciler_for(kernel, min_interval=0.2, max_interval=30.0)
    kernel.fail["ensure_sysctls"] = KernelError("sysctl failed")

    assert reconciler.run_pending(0.0) is True
    assert reconciler.last_error == "sysctl failed"
    assert reconciler.run_pending(RETRY_INITIAL - 0.01) is False
    assert reconciler.run_pending(RETRY_INITIAL) is True  # first retry
    second_retry = RETRY_INITIAL + 2 * RETRY_INITIAL
    assert reconciler.run_pending(second_retry - 0.01) is False
    del kernel.fail["ensure_sysctls"]
    assert reconciler.run_pending(second_retry) is True

    assert (reconciler.last_error, reconciler.sync_count) == (None, 1)
    assert reconciler.seconds_until_due(second_retry) == pytest.approx(30.0)  # backoff reset


def test_backoff_doubles_up_to_max_interval(kernel):
    reconciler = reconciler_for(kernel, min_interval=0.2, max_interval=5.0)
    kernel.fail["ensure_sysctls"] = KernelError("sysctl failed")
    now, waits = 0.0, []
    for _ in range(6):
        assert reconciler.run_pending(now) is True
        waits.append(reconciler.seconds_until_due(now))
        now += waits[-1]
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_each_distinct_failure_is_logged_once_and_recovery_too(kernel, caplog):
    reconciler = reconciler_for(kernel, min_interval=0.0, max_interval=1.0)
    with caplog.at_level(logging.INFO, logger="net_manager.node.reconciler"):
        kernel.fail["ensure_sysctls"] = KernelError("first problem")
        for now in (0, 10, 20):
            reconciler.run_pending(now)
        kernel.fail["ensure_sysctls"] = KernelError("second problem")
        reconciler.run_pending(30)
        del kernel.fail["ensure_sysctls"]
        reconciler.run_pending(40)
        reconciler.run_pending(50)

    messages = [(r.levelname, r.getMessage(), getattr(r, "fields", {})) for r in caplog.records]
    failures = [fields["reason"] for level, _, fields in messages if level == "ERROR"]
    assert failures == ["first problem", "second problem"]
    assert [m for _, m, _ in messages if "recovered" in m] == ["kernel sync recovered"]


def test_desired_state_errors_are_sync_failures(kernel):
    def desired() -> DesiredState:
        raise RuntimeError("state file unreadable")

    reconciler = Reconciler(kernel, desired)
    assert reconciler.run_pending(0.0) is True
    assert reconciler.last_error == "state file unreadable"


def test_runner_thread_syncs_on_start_and_on_poke_and_stops(kernel):
    reconciler = reconciler_for(kernel, min_interval=0.01, max_interval=60.0)
    reconciler.start()
    try:
        wait_until(lambda: reconciler.sync_count >= 1, message="first sync")
        reconciler.poke()
        wait_until(lambda: reconciler.sync_count >= 2, message="sync after poke")
    finally:
        reconciler.stop()
    assert not any(t.name == "reconciler" for t in threading.enumerate())


@pytest.mark.parametrize("min_interval, max_interval", [(-1, 30), (5, 1), (0, 0)])
def test_intervals_are_validated(kernel, min_interval, max_interval):
    with pytest.raises(ValueError, match="min_interval"):
        Reconciler(
            kernel, lambda: DesiredState(None), min_interval=min_interval, max_interval=max_interval
        )


# ---- addressing ---------------------------------------------------------------------


def test_container_addressing_uses_subnet_prefixes_and_bridge_gateways():
    assert container_addressing(NODE, container(1)) == (
        "10.16.0.2/26",
        "fc00::2/120",
        "10.16.0.1",
        "fc00::1",
    )
    v4_only = ContainerSpec("k", "oak-h1", "oak-c1", "/proc/1/ns/net", "10.16.0.2", None)
    assert container_addressing(NODE, v4_only) == ("10.16.0.2/26", None, "10.16.0.1", None)
    bad = NodeSpec("oak-br0", "10.16.0.1", None, "not-a-subnet", None, 1450, TUN)
    with pytest.raises(ValueError, match="k"):
        container_addressing(bad, v4_only)
