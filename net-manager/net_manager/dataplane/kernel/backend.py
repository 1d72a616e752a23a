"""The kernel backend: the TUN proxy plus nftables rules for service IPs it can serve.

`KernelBackend` implements `DataPlaneBackend` by wrapping another backend (the TUN
proxy's supervisor), so misses, first packets, callers and services the kernel does not
serve behave exactly as with the TUN alone. Each table (`push_snapshot`) is planned for
the kernel (`ruleset.plan`) and, when the rules change, applied in the node's namespace
as one transaction *before* the proxy gets the table: a kernel rule never outlives the
table that made it (e.g. an RR service IP whose instances were all local keeps no DNAT
to them once the proxy knows an instance elsewhere). A background thread, every
`poll_interval` seconds, re-applies after a failure and reports the services whose
kernel flows carried packets (`on_used`, like the proxy's Used reports).

An apply that fails removes our table: the TUN proxy then serves everything, which is
slower but never wrong (stale rules could send traffic to an instance that left).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from net_manager.dataplane.backend import (
    DataPlaneBackend,
    DataPlaneFactory,
    ResolveCallback,
    UsedCallback,
)
from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.kernel.nft import Conntrack, Nft, NftError, chain_packets
from net_manager.dataplane.kernel.ruleset import KernelPlan, departed, plan

log = logging.getLogger(__name__)


class KernelBackend:
    """See the module doc."""

    mode = "kernel"

    def __init__(
        self,
        inner: DataPlaneBackend,
        nft: Nft,
        *,
        bridge: str,
        on_used: UsedCallback,
        poll_interval: float = 1.0,
        conntrack: Conntrack | None = None,
    ) -> None:
        self.inner = inner
        self._nft = nft
        self._conntrack = conntrack
        self._bridge = bridge
        self._on_used = on_used
        self._poll_interval = poll_interval
        self._lock = threading.Lock()  # one apply at a time; guards the fields below
        self._table: tuple[list[ServiceEntry], list[Endpoint], str] | None = None
        self._applied = ""  # the script in force ("" = none or unknown)
        self.plan: KernelPlan | None = None
        self._retired_flows = 0  # new-connection counts of tables we replaced
        self._live_flows: dict[str, int] = {}
        self._stats = {
            "kernel_applies": 0,
            "kernel_apply_errors": 0,
            "kernel_used_reports": 0,
            "kernel_flows_forgotten": 0,  # (service IP, departed instance) pairs flushed
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def rtt(self) -> dict[str, float]:
        return self.inner.rtt

    @rtt.setter
    def rtt(self, value: dict[str, float]) -> None:
        self.inner.rtt = value

    def start(self) -> None:
        """Start the proxy and the poll thread; a table left by a daemon that died is
        removed first (its rules may name instances that are gone)."""
        with self._lock:
            self._fall_back_locked()
        self.inner.start()
        self._thread = threading.Thread(target=self._run, name="dataplane-kernel", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        with self._lock:
            try:
                self._nft.delete_table()
            except NftError as err:
                log.error("cannot remove the kernel rules: %s", err)
            self._applied = ""
            self.plan = None
        self.inner.stop()

    def push_snapshot(
        self, services: list[ServiceEntry], local_instances: list[Endpoint], node_ip: str
    ) -> None:
        with self._lock:  # also keeps concurrent tables in the same order in both
            self._table = (list(services), list(local_instances), node_ip)
            self._sync_locked()
            self.inner.push_snapshot(services, local_instances, node_ip)

    def counters(self) -> dict[str, int | float]:
        values = dict(self.inner.counters())
        with self._lock:
            values.update(self._stats)
            values["kernel_services"] = len(self.plan.services) if self.plan else 0
            values["kernel_flows_created"] = self._retired_flows + sum(self._live_flows.values())
        return values

    # ------------------------------------------------------------ internals

    def _run(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self._run_once()
            except Exception:  # noqa: BLE001 - the loop must go on
                log.exception("kernel data plane round failed")

    def _run_once(self) -> None:
        """One round: retry or refresh the rules, read the counters, report use. The
        counters are read outside the lock, so a new table never waits for them."""
        with self._lock:
            self._sync_locked()
            generation = self._stats["kernel_applies"] if self._applied else None
        if generation is None:
            return
        flows = self._read_flows()
        with self._lock:
            if flows is not None and generation == self._stats["kernel_applies"]:
                self._live_flows = flows
        self._report_used()

    def _sync_locked(self) -> None:
        """Apply the plan of the latest table when its rules differ from those in force."""
        if self._table is None or self._stop.is_set():
            return
        services, local_instances, node_ip = self._table
        new_plan = plan(services, local_instances, node_ip, bridge=self._bridge)
        script = new_plan.render()
        if script == self._applied:
            self.plan = new_plan
            return
        if self.plan is not None and not _takes_away(self.plan, new_plan):
            # Reading costs an nft run; a table that takes a service IP (or one of its
            # targets) from the kernel must not wait for it: until the apply, the old
            # rules still send new connections there. Its table's last counts are lost.
            self._read_flows_locked()
        try:
            self._nft.apply(script)
        except NftError as err:
            self._stats["kernel_apply_errors"] += 1
            log.error("kernel rules refused, the TUN serves everything: %s", err)
            self._fall_back_locked()
            return
        self._retired_flows += sum(self._live_flows.values())
        self._live_flows = {}
        self._applied = script
        if self.plan is not None:
            self._forget_locked(departed(self.plan, services))
        self.plan = new_plan
        self._stats["kernel_applies"] += 1
        log.info(
            "kernel rules applied: %d service IPs (%d left to the TUN)",
            len(new_plan.services),
            len(new_plan.skipped),
        )

    def _forget_locked(self, gone: list[tuple[int, str, str]]) -> None:
        """Connections to instances that left pick again on their next packet."""
        if self._conntrack is None:
            return
        for version, service_ip, namespace_ip in gone:
            try:
                self._conntrack.forget(version, service_ip, namespace_ip)
            except NftError as err:
                log.warning("connections to a departed instance stay: %s", err)
                return
            self._stats["kernel_flows_forgotten"] += 1

    def _fall_back_locked(self) -> None:
        self._applied = ""
        self.plan = None
        try:
            self._nft.delete_table()
        except NftError as err:
            log.error("cannot remove the kernel rules: %s", err)

    def _read_flows_locked(self) -> None:
        if self._applied and (flows := self._read_flows()) is not None:
            self._live_flows = flows

    def _read_flows(self) -> dict[str, int] | None:
        """New connections per service chain of the table in force (None: unreadable)."""
        try:
            packets = chain_packets(self._nft.table())
        except NftError as err:
            log.warning("cannot read the kernel counters: %s", err)
            return None
        return {c: n for c, n in packets.items() if c.startswith("service_")}

    def _report_used(self) -> None:
        with self._lock:
            current = self.plan if self._applied else None
        if current is None or not current.services:
            return
        jobs: set[str] = set()
        for name in ("used_v4", "used_v6"):
            try:
                elements = self._nft.set_elements(name)
            except NftError as err:
                log.warning("cannot read the used services: %s", err)
                return
            for service_ip in elements:
                jobs.update(current.jobs_of(service_ip))
        if jobs:
            self._stats["kernel_used_reports"] += 1
            self._on_used(sorted(jobs))


def _takes_away(old: KernelPlan, new: KernelPlan) -> bool:
    """Whether `new` stops serving a service IP `old` serves, or drops one of its
    targets, i.e. whether the old rules would send new connections where they must not go."""
    kept = {s.service_ip: set(s.targets) for s in new.services}
    return any(
        s.service_ip not in kept or not set(s.targets) <= kept[s.service_ip] for s in old.services
    )


def kernel_factory(inner_factory: DataPlaneFactory, bridge: str) -> DataPlaneFactory:
    """A factory building `inner_factory`'s backend wrapped in a KernelBackend whose nft
    runs behind the same `netns_exec` as the data-plane process."""

    def build(
        tun_name: str | None,
        tun_v4_cidr: str,
        tun_v6_cidr: str,
        mtu: int,
        port: int,
        *,
        on_resolve: ResolveCallback,
        on_used: UsedCallback,
        netns_exec: Sequence[str] | None = None,
        flow_quota: float = 0.25,
        tunnel_key: str = "",
    ) -> DataPlaneBackend:
        inner = inner_factory(
            tun_name,
            tun_v4_cidr,
            tun_v6_cidr,
            mtu,
            port,
            on_resolve=on_resolve,
            on_used=on_used,
            netns_exec=netns_exec,
            flow_quota=flow_quota,
            tunnel_key=tunnel_key,
        )
        return KernelBackend(
            inner,
            Nft(netns_exec),
            bridge=bridge,
            on_used=on_used,
            conntrack=Conntrack(netns_exec),
        )

    return build
