"""KernelBackend against a recording stand-in for nft (no root): when it applies, what it
does when the kernel refuses, how it reports use and counts flows."""

from __future__ import annotations

from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.kernel.backend import KernelBackend
from net_manager.dataplane.kernel.nft import NftError
from net_manager.dataplane.kernel.ruleset import render_delete

HERE = "198.18.0.1"
A = Endpoint("X.d.a.d", 0, "10.16.0.2", "fc00::2", "10.30.0.2", "fdff::2", HERE, 50103)
B = Endpoint("X.d.b.d", 0, "10.16.0.3", "fc00::3", "10.30.0.3", "fdff::3", HERE, 50103)
RR = ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (B,))


class FakeNft:
    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.refuse = False
        self.packets: dict[str, int] = {}
        self.used: dict[str, list[str]] = {"used_v4": [], "used_v6": []}

    def apply(self, script: str, *, check_only: bool = False) -> None:
        if self.refuse and script != render_delete():
            raise NftError("Error: Could not process rule: Operation not supported")
        self.scripts.append(script)

    def delete_table(self) -> None:
        self.apply(render_delete())

    def table(self) -> list[dict]:
        rules = [
            {"rule": {"chain": chain, "expr": [{"counter": {"packets": n, "bytes": 0}}]}}
            for chain, n in self.packets.items()
        ]
        sets = [
            {"set": {"name": name, "elem": [{"elem": {"val": ip, "expires": 1}} for ip in ips]}}
            for name, ips in self.used.items()
        ]
        return rules + sets


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


def make() -> tuple[KernelBackend, FakeNft, Inner, list[list[str]]]:
    nft, inner, used = FakeNft(), Inner(), []
    backend = KernelBackend(inner, nft, bridge="oak-br0", on_used=used.append, poll_interval=60)
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


def test_used_service_ips_are_reported_as_their_jobs():
    backend, nft, _, used = make()
    backend.push_snapshot([RR], [A, B], HERE)
    backend._run_once()
    assert used == []  # nothing carried traffic
    nft.used = {"used_v4": ["10.30.1.30"], "used_v6": ["fdff::9"]}  # the latter: not ours
    backend._run_once()
    assert used == [["X.d.b.d"]]


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
