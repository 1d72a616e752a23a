"""KernelBackend against a recording stand-in for nft (no root): when it applies, what it
does when the kernel refuses, how it reports use and counts flows."""

from __future__ import annotations

import pytest

from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.kernel.backend import KernelBackend
from net_manager.dataplane.kernel.nft import NftError
from net_manager.dataplane.kernel.ruleset import render_delete
from testsupport import wait_until

HERE = "198.18.0.1"
A = Endpoint("X.d.a.d", 0, "10.16.0.2", "fc00::2", "10.30.0.2", "fdff::2", HERE, 50103)
B = Endpoint("X.d.b.d", 0, "10.16.0.3", "fc00::3", "10.30.0.3", "fdff::3", HERE, 50103)
RR = ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (B,))


class FakeNft:
    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.refuse = False
        self.packets: dict[str, int] = {}

    def apply(self, script: str, *, check_only: bool = False) -> None:
        if self.refuse and script != render_delete():
            raise NftError("Error: Could not process rule: Operation not supported")
        self.scripts.append(script)

    def delete_table(self) -> None:
        self.apply(render_delete())

    def table(self) -> list[dict]:
        return [
            {"rule": {"chain": chain, "expr": [{"counter": {"packets": n, "bytes": 0}}]}}
            for chain, n in self.packets.items()
        ]


class FakeConntrack:
    """`conntrack -L -g -o id` lines: (id, original destination, packets)."""

    def __init__(self) -> None:
        self.flows: list[tuple[str, str, int]] = []
        self.accounting = 0  # times it was switched on
        self.broken = False

    def enable_accounting(self) -> None:
        self.accounting += 1

    def listing(self) -> str:
        if self.broken:
            raise NftError("conntrack -L: Operation not permitted")
        return "".join(
            f"udp 17 29 src=10.16.0.2 dst={dst} sport=1 dport=2 packets={n} bytes=1 "
            f"src=10.16.0.3 dst=10.30.0.2 sport=2 dport=1 packets=0 bytes=0 mark=0 use=1 id={i}\n"
            for i, dst, n in self.flows
        )

    def forget(self, version: int, service_ip: str, namespace_ip: str) -> None:
        pass


class Inner:
    def __init__(self) -> None:
        self.rtt: dict[str, float] = {"198.18.0.2": 0.001}
        self.snapshots: list[tuple] = []
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")

    def push_snapshot(self, services, local_instances, node_ip) -> None:
        self.snapshots.append((services, local_instances, node_ip))

    def counters(self) -> dict[str, int | float]:
        return {"flows_created": 7}


def make(conntrack: FakeConntrack | None = None):
    nft, inner, used = FakeNft(), Inner(), []
    backend = KernelBackend(
        inner, nft, bridge="oak-br0", on_used=used.append, poll_interval=60, conntrack=conntrack
    )
    return backend, nft, inner, used


def test_start_removes_a_stale_table_then_starts_the_proxy():
    backend, nft, inner, _ = make()
    backend.start()
    assert nft.scripts == [render_delete()] and inner.calls == ["start"]
    backend.stop()
    assert nft.scripts[-1] == render_delete() and inner.calls == ["start", "stop"]


def test_the_proxy_gets_every_table_and_the_kernel_only_changed_rules():
    backend, nft, inner, _ = make()
    backend.push_snapshot([RR], [A, B], HERE)
    backend.push_snapshot([RR], [A, B], HERE)
    assert len(inner.snapshots) == 2
    assert len(nft.scripts) == 1 and "10.30.1.30" in nft.scripts[0]
    backend.push_snapshot([], [A, B], HERE)
    assert len(nft.scripts) == 2 and "10.30.1.30" not in nft.scripts[1]
    assert backend.counters()["kernel_applies"] == 2
    assert backend.rtt == {"198.18.0.2": 0.001}  # the proxy's probes


def test_a_refused_table_leaves_everything_to_the_tun_and_is_retried():
    backend, nft, inner, _ = make()
    nft.refuse = True
    backend.push_snapshot([RR], [A, B], HERE)
    assert nft.scripts == [render_delete()]  # our table removed, nothing stale stays
    assert backend.plan is None
    counters = backend.counters()
    assert counters["kernel_apply_errors"] == 1 and counters["kernel_services"] == 0
    assert inner.snapshots  # the TUN proxy has the table anyway
    nft.refuse = False
    backend._run_once()
    assert "10.30.1.30" in nft.scripts[-1] and backend.counters()["kernel_services"] == 2


def test_service_ips_whose_flows_carried_packets_are_reported_as_their_jobs():
    conntrack = FakeConntrack()
    backend, _, _, used = make(conntrack)
    backend.push_snapshot([RR], [A, B], HERE)
    assert conntrack.accounting == 1  # switched on with the first rules
    backend._run_once()
    assert used == []  # no flows
    conntrack.flows = [("7", "10.30.1.30", 3), ("8", "fdff::9", 5)]  # the latter: not ours
    backend._run_once()
    assert used == [["X.d.b.d"]]
    backend._run_once()  # the flow is still there but carried nothing since
    assert used == [["X.d.b.d"]]
    conntrack.flows = [("7", "10.30.1.30", 4)]  # an established flow sending again
    backend._run_once()
    assert used == [["X.d.b.d"], ["X.d.b.d"]]
    backend.push_snapshot([], [A, B], HERE)
    assert conntrack.accounting == 1  # once is enough


def test_an_unreadable_conntrack_is_counted_and_reports_nothing():
    conntrack = FakeConntrack()
    backend, _, _, used = make(conntrack)
    backend.push_snapshot([RR], [A, B], HERE)
    conntrack.flows, conntrack.broken = [("7", "10.30.1.30", 3)], True
    backend._run_once()
    assert used == [] and backend.counters()["kernel_use_read_errors"] == 1


def test_flow_counts_survive_a_new_table():
    backend, nft, _, _ = make()
    backend.push_snapshot([RR], [A, B], HERE)
    nft.packets = {"service_v4_0": 3, "prerouting": 99}
    backend._run_once()
    assert backend.counters()["kernel_flows_created"] == 3
    backend.push_snapshot([], [A, B], HERE)  # the table is replaced, counters restart
    nft.packets = {}
    backend._run_once()
    counters = backend.counters()
    assert counters["kernel_flows_created"] == 3 and counters["flows_created"] == 7


class OrderedInner(Inner):
    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def push_snapshot(self, services, local_instances, node_ip) -> None:
        super().push_snapshot(services, local_instances, node_ip)
        self.events.append("proxy")


class OrderedNft(FakeNft):
    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def apply(self, script: str, *, check_only: bool = False) -> None:
        super().apply(script, check_only=check_only)
        self.events.append("nft" if script != render_delete() else "delete")


def started(*, defer_additions: bool) -> tuple[KernelBackend, list[str]]:
    events: list[str] = []
    inner, nft = OrderedInner(events), OrderedNft(events)
    backend = KernelBackend(
        inner,
        nft,
        bridge="oak-br0",
        on_used=print,
        poll_interval=3600,
        defer_additions=defer_additions,
    )
    backend.start()
    events.clear()
    return backend, events


REMOTE = Endpoint("X.d.b.d", 1, "10.16.0.66", "fc00::66", "10.30.0.9", "fdff::9",
                  "198.18.0.2", 50103)  # fmt: skip


def test_a_table_that_only_adds_reaches_the_proxy_at_once_and_the_kernel_right_after():
    """The daemon answers a table miss when push_snapshot returns: the first packet then
    goes through the proxy without waiting for `nft`."""
    backend, events = started(defer_additions=True)
    try:
        backend.push_snapshot([RR], [A, B], HERE)
        assert events[0] == "proxy"
        wait_until(lambda: events == ["proxy", "nft"])
        assert backend.counters()["kernel_services"] == 2
        events.clear()
        more = ServiceEntry("10.30.1.31", "", "RR", (A, B))  # a new service IP
        backend.push_snapshot([RR, more], [A, B], HERE)
        wait_until(lambda: events == ["proxy", "nft"])
        assert backend.counters()["kernel_services"] == 3
    finally:
        backend.stop()


def test_a_table_that_takes_a_service_ip_away_is_applied_before_the_proxy_gets_it():
    backend, events = started(defer_additions=True)
    try:
        backend.push_snapshot([RR], [A, B], HERE)
        wait_until(lambda: "nft" in events)
        events.clear()
        gained_remote = ServiceEntry(RR.service_ip, RR.service_ip_v6, "RR", (B, REMOTE))
        backend.push_snapshot([gained_remote], [A, B], HERE)
        assert events == ["nft", "proxy"]  # synchronous: no stale DNAT after the proxy switched
        assert backend.counters()["kernel_services"] == 0
    finally:
        backend.stop()


def test_without_deferral_every_table_is_applied_before_the_proxy_gets_it():
    backend, events = started(defer_additions=False)
    try:
        backend.push_snapshot([RR], [A, B], HERE)
        assert events == ["nft", "proxy"]
    finally:
        backend.stop()


def test_a_table_is_planned_once_whether_applied_at_once_or_deferred(monkeypatch):
    from net_manager.dataplane.kernel import backend as module

    real, calls = module.plan, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "plan", counted)
    backend, events = started(defer_additions=True)
    try:
        backend.push_snapshot([RR], [A, B], HERE)  # only adds: planned here, applied by the thread
        wait_until(lambda: "nft" in events)
        assert len(calls) == 1
        gained_remote = ServiceEntry(RR.service_ip, RR.service_ip_v6, "RR", (B, REMOTE))
        backend.push_snapshot([gained_remote], [A, B], HERE)  # takes away: applied at once
        assert len(calls) == 2 and backend.counters()["kernel_services"] == 0
    finally:
        backend.stop()


class SlowConntrack(FakeConntrack):
    """A listing that takes `cost` seconds of the fake clock (a tenant's many connections)."""

    def __init__(self, clock: list[float], cost: float) -> None:
        super().__init__()
        self.clock, self.cost, self.listings = clock, cost, 0

    def listing(self) -> str:
        self.listings += 1
        self.clock[0] += self.cost
        return super().listing()


def paced(cost: float):
    clock = [100.0]
    conntrack = SlowConntrack(clock, cost)
    used: list[list[str]] = []
    backend = KernelBackend(
        Inner(),
        FakeNft(),
        bridge="oak-br0",
        on_used=used.append,
        poll_interval=1.0,
        conntrack=conntrack,
        clock=lambda: clock[0],
    )
    backend.push_snapshot([RR], [A, B], HERE)
    return backend, conntrack, clock, used


def rounds(backend: KernelBackend, clock: list[float], count: int) -> None:
    for _ in range(count):
        backend._run_once()
        clock[0] += 1.0


def test_a_costly_listing_runs_less_often_and_use_is_seen_at_the_next_one():
    backend, conntrack, clock, used = paced(cost=0.5)
    rounds(backend, clock, 1)
    assert conntrack.listings == 1 and backend.use_lag() == pytest.approx(1.5)
    conntrack.flows = [("7", "10.30.1.30", 3)]  # used right after the listing
    rounds(backend, clock, 4)
    assert conntrack.listings == 1 and used == []  # 0.5 s a listing: one per 5 s
    assert backend.use_lag() == pytest.approx(5.5)  # the idle rule looks back to it
    rounds(backend, clock, 1)
    assert conntrack.listings == 2 and used == [["X.d.b.d"]]
    counters = backend.counters()
    assert counters["kernel_use_listings"] == 2 and counters["kernel_use_rounds_skipped"] == 4
    assert counters["kernel_use_interval_seconds"] == 5.0
    assert counters["kernel_use_listing_seconds"] == 0.5


def test_a_cheap_listing_runs_every_round_without_lag():
    backend, conntrack, clock, _ = paced(cost=0.05)
    rounds(backend, clock, 5)
    assert conntrack.listings == 5 and backend.use_lag() == 0.0
    assert backend.counters()["kernel_use_rounds_skipped"] == 0


def test_the_lag_ends_only_after_the_use_it_found_is_reported():
    """Else the daemon could drop a job between the listing and its report."""
    backend, conntrack, clock, _ = paced(cost=0.5)
    rounds(backend, clock, 1)
    conntrack.flows = [("7", "10.30.1.30", 3)]
    lag_at_report: list[float] = []
    backend._on_used = lambda jobs: lag_at_report.append(backend.use_lag())
    rounds(backend, clock, 5)
    assert lag_at_report == [pytest.approx(6.0)]  # still the previous listing's
    assert backend.use_lag() == pytest.approx(1.5)


def test_once_nothing_is_served_the_next_table_is_listed_at_once():
    backend, conntrack, clock, _ = paced(cost=0.5)
    rounds(backend, clock, 1)
    backend.push_snapshot([], [A, B], HERE)
    rounds(backend, clock, 1)
    backend.push_snapshot([RR], [A, B], HERE)
    rounds(backend, clock, 1)
    assert conntrack.listings == 2


def test_after_a_failed_listing_the_idle_rule_still_looks_back_to_the_last_good_one():
    backend, conntrack, clock, used = paced(cost=0.05)
    rounds(backend, clock, 1)  # a good listing at 100
    conntrack.broken = True
    rounds(backend, clock, 2)
    assert backend.use_lag() == pytest.approx(3.15)  # nothing seen since 100 (3 rounds, 3 listings)
    assert backend.counters()["kernel_use_read_errors"] == 2
    conntrack.broken = False
    conntrack.flows = [("7", "10.30.1.30", 3)]
    rounds(backend, clock, 1)
    assert used == [["X.d.b.d"]] and backend.use_lag() == 0.0
