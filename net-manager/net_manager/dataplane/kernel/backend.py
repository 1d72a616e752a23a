"""The kernel backend: the TUN proxy plus nftables rules for service IPs it can serve.

`KernelBackend` implements `DataPlaneBackend` by wrapping another backend (the TUN
proxy's supervisor), so misses, first packets, callers and services the kernel does not
serve behave exactly as with the TUN alone. Each table (`push_snapshot`) is planned for
the kernel (`ruleset.plan`) and, when the rules change, applied in the node's namespace
as one transaction. A table that takes a service IP or a target away from the kernel is
applied *before* the proxy gets it: a kernel rule never outlives the table that made it
(e.g. an RR service IP whose instances were all local keeps no DNAT to them once the
proxy knows an instance elsewhere). With `defer_additions` (what the daemon uses), a
table that only adds goes to the proxy at once and the background thread applies it
right after, so a table miss's first packet never waits for `nft` (the daemon answers
the miss when `push_snapshot` returns). A background thread, every
`poll_interval` seconds, re-applies after a failure and reports the services whose
kernel flows carried packets since the last round (`on_used`, like the proxy's Used
reports), from conntrack's per-connection packet counts (`flows.py`), which it switches
on in the node's namespace after the first apply. Listing conntrack costs time in
proportion to the connections a tenant opens, so it is paced to a share of one core
(`pace.py`); `use_lag()` tells the idle rule how late use may be seen then.

An apply that fails removes our table: the TUN proxy then serves everything, which is
slower but never wrong (stale rules could send traffic to an instance that left).

With a tunnel port, the backend also runs the kernel tunnel between our nodes: the
proxy announces it in its RTT probes (`vxlan`), and each table and each poll derive the
tunnel (`ruleset.tunnel_spec`: every peer whose echo announced CAP_VXLAN) and the peers
whose instances the kernel may reach (those whose echo also said they admit us,
CAP_VXLAN_PEER). The node layer makes the device match (`on_tunnel`, synchronous) before
the rules that use it are applied; a peer that leaves is removed from the device only
after the rules no longer send anything to it. A refused tunnel leaves the remote
instances to the TUN proxy. `stop()` removes the tunnel too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from net_manager.dataplane.backend import (
    DataPlaneBackend,
    DataPlaneFactory,
    DataPlaneOptions,
    TunnelCallback,
    UsedCallback,
)
from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.io.probes import CAP_VXLAN, CAP_VXLAN_PEER
from net_manager.dataplane.kernel.flows import parse_listing, used_destinations
from net_manager.dataplane.kernel.nft import Conntrack, Nft, NftError, chain_packets
from net_manager.dataplane.kernel.pace import ListingPace
from net_manager.dataplane.kernel.ruleset import KernelPlan, departed, plan, tunnel_spec
from net_manager.node.errors import KernelError
from net_manager.node.tunnel import (
    TunnelPeer,
    TunnelSpec,
    port_of,
    sorted_subnets,
    usable_node_ip,
)

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
        tunnel_port: int = 0,
        tunnel_mtu: int = 1450,
        on_tunnel: TunnelCallback | None = None,
        defer_additions: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`tunnel_port` 0 or no `on_tunnel`: no kernel tunnel (stage 1: local
        instances only). `defer_additions`: see the module doc (only once started).
        `clock` times the conntrack listings (their cost paces them)."""
        self.inner = inner
        self._nft = nft
        self._conntrack = conntrack
        self._bridge = bridge
        self._on_used = on_used
        self._poll_interval = poll_interval
        self._lock = threading.Lock()  # one apply at a time; guards the fields below
        self._table: tuple[list[ServiceEntry], list[Endpoint], str] | None = None
        self._table_version = 0  # bumped by every table: the key of the plan below
        self._planned: tuple[tuple[object, ...], KernelPlan] | None = None
        self._applied = ""  # the script in force ("" = none or unknown)
        self.plan: KernelPlan | None = None
        self._tunnel_port = tunnel_port if on_tunnel is not None else 0
        self._tunnel_mtu = tunnel_mtu
        self._on_tunnel = on_tunnel
        self.tunnel: TunnelSpec | None = None  # what the node layer holds (None: nothing)
        self._tunnel_failed = False
        self._retired_flows = 0  # new-connection counts of tables we replaced
        self._live_flows: dict[str, int] = {}
        self._accounting = False  # conntrack counts packets per connection
        self._flow_packets: dict[str, int] = {}  # conntrack id -> packets at the last round
        self._clock = clock
        self._pace = ListingPace(poll_interval)  # the poll thread's; others only read it
        self._stats = {
            "kernel_applies": 0,
            "kernel_apply_errors": 0,
            "kernel_used_reports": 0,
            "kernel_flows_forgotten": 0,  # (service IP, departed instance) pairs flushed
            "kernel_tunnel_errors": 0,
            "kernel_use_read_errors": 0,
        }
        self._defer_additions = defer_additions
        self._stop = threading.Event()
        self._wake = threading.Event()  # a deferred table waits for the thread
        self._thread: threading.Thread | None = None

    @property
    def rtt(self) -> dict[str, float]:
        return self.inner.rtt

    @rtt.setter
    def rtt(self, value: dict[str, float]) -> None:
        self.inner.rtt = value

    @property
    def peer_capabilities(self) -> dict[str, int]:
        return self.inner.peer_capabilities

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
        self._wake.set()
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
            self._set_tunnel_locked(None)
        self.inner.stop()

    def push_snapshot(
        self, services: list[ServiceEntry], local_instances: list[Endpoint], node_ip: str
    ) -> None:
        with self._lock:  # also keeps concurrent tables in the same order in both
            self._table = (list(services), list(local_instances), node_ip)
            self._table_version += 1
            if self._thread is not None and self._defer_additions and self._only_adds_locked():
                self.inner.push_snapshot(services, local_instances, node_ip)
                self._wake.set()
                return
            self._sync_locked()
            self.inner.push_snapshot(services, local_instances, node_ip)

    def counters(self) -> dict[str, int | float]:
        values = dict(self.inner.counters())
        with self._lock:
            values.update(self._stats)
            values["kernel_services"] = len(self.plan.services) if self.plan else 0
            values["kernel_tunnel_peers"] = len(self.tunnel.peers) if self.tunnel else 0
            values["kernel_flows_created"] = self._retired_flows + sum(self._live_flows.values())
        values["kernel_use_listings"] = self._pace.listings
        values["kernel_use_rounds_skipped"] = self._pace.rounds_skipped
        values["kernel_use_interval_seconds"] = round(self._pace.interval, 3)
        values["kernel_use_listing_seconds"] = round(self._pace.cost, 3)
        return values

    def use_lag(self) -> float:
        """Seconds of kernel flows' use not looked at yet, beyond the poll pace."""
        return self._pace.lag(self._clock())

    # ------------------------------------------------------------ internals

    def _run(self) -> None:
        next_round = time.monotonic() + self._poll_interval
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_round - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if time.monotonic() < next_round:  # woken: a deferred table
                    with self._lock:
                        self._sync_locked()
                    continue
                next_round = time.monotonic() + self._poll_interval
                self._run_once()
            except Exception:  # noqa: BLE001 - the loop must go on
                log.exception("kernel data plane round failed")

    def _run_once(self) -> None:
        """One round: retry or refresh the rules, read the counters, report use. The
        counters and conntrack are read outside the lock, so a new table never waits."""
        with self._lock:
            self._sync_locked()
            generation = self._stats["kernel_applies"] if self._applied else None
        if generation is None:
            self._pace.nothing_to_list()
            return
        table = self._read_table()  # one listing: the counters and the `used` sets
        if table is None:
            return
        with self._lock:
            if generation == self._stats["kernel_applies"]:
                self._live_flows = _service_flows(table)
        self._report_used()

    def _only_adds_locked(self) -> bool:
        """Whether the latest table's rules only add to those in force (and need no tunnel
        change first), so the proxy may have the table before they are applied."""
        if self._table is None or self.plan is None:
            return self._table is not None and not self._applied
        services, _, node_ip = self._table
        tunnel, kernel_peers = self._tunnel_wanted(services, node_ip)
        if tunnel != self.tunnel or self._tunnel_failed:
            return False
        return not _takes_away(self.plan, self._plan_locked(tunnel, kernel_peers))

    def _sync_locked(self) -> None:
        """Apply the plan of the latest table when its rules differ from those in force."""
        if self._table is None or self._stop.is_set():
            return
        services, _, node_ip = self._table
        tunnel, kernel_peers = self._tunnel_wanted(services, node_ip)
        if tunnel is not None and tunnel != self.tunnel:
            # Everything the old and the new rules may send through the device is there
            # before the new rules; what only the old ones used goes after them.
            self._set_tunnel_locked(_union(self.tunnel, tunnel))
        if tunnel is not None and self._tunnel_failed:
            tunnel, kernel_peers = None, set()
        new_plan = self._plan_locked(tunnel, kernel_peers)
        script = new_plan.render()
        if script == self._applied:
            self.plan = new_plan
            if tunnel != self.tunnel and not self._tunnel_failed:
                self._set_tunnel_locked(tunnel)
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
        self._enable_accounting_locked()
        if self.plan is not None:
            self._forget_locked(departed(self.plan, services))
        self.plan = new_plan
        self._stats["kernel_applies"] += 1
        if tunnel != self.tunnel and not self._tunnel_failed:
            self._set_tunnel_locked(tunnel)
        log.info(
            "kernel rules applied: %d service IPs (%d left to the TUN)",
            len(new_plan.services),
            len(new_plan.skipped),
        )

    def _plan_locked(self, tunnel: TunnelSpec | None, kernel_peers: set[str]) -> KernelPlan:
        """The plan of the latest table; computed once for a table, tunnel, set of peers
        and RTTs (a deferred table is planned by push_snapshot and applied by the thread)."""
        assert self._table is not None
        services, local_instances, node_ip = self._table
        rtt = dict(self.inner.rtt)
        key = (self._table_version, tunnel, frozenset(kernel_peers), frozenset(rtt.items()))
        if self._planned is None or self._planned[0] != key:
            wanted = plan(
                services,
                local_instances,
                node_ip,
                bridge=self._bridge,
                kernel_peers=kernel_peers,
                rtt=rtt,
                tunnel=tunnel,
            )
            self._planned = (key, wanted)
        return self._planned[1]

    def _tunnel_wanted(
        self, services: list[ServiceEntry], node_ip: str
    ) -> tuple[TunnelSpec | None, set[str]]:
        """The tunnel to every peer that announced it, and the peers that admit us."""
        if not self._tunnel_port or not usable_node_ip(node_ip):
            return None, set()
        capabilities = dict(self.inner.peer_capabilities)
        peers = [n for n, c in capabilities.items() if c & CAP_VXLAN and usable_node_ip(n)]
        both = CAP_VXLAN | CAP_VXLAN_PEER
        admitting = {n for n in peers if capabilities[n] & both == both}
        spec = tunnel_spec(services, peers, node_ip, port=self._tunnel_port, mtu=self._tunnel_mtu)
        return spec, admitting

    def _set_tunnel_locked(self, tunnel: TunnelSpec | None) -> None:
        """Have the node layer make the tunnel so (synchronously)."""
        if self._on_tunnel is None or (tunnel == self.tunnel and not self._tunnel_failed):
            return
        try:
            self._on_tunnel(tunnel)
        except (KernelError, ValueError) as err:
            self._stats["kernel_tunnel_errors"] += 1
            if not self._tunnel_failed:
                log.error("kernel tunnel refused, remote instances stay on the TUN: %s", err)
            self._tunnel_failed = tunnel is not None
            return
        self._tunnel_failed = False
        self.tunnel = tunnel

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
        if self._applied and (table := self._read_table()) is not None:
            self._live_flows = _service_flows(table)

    def _read_table(self) -> list[dict[str, Any]] | None:
        """Our table in force as nft's JSON objects (None: unreadable)."""
        try:
            return self._nft.table()
        except NftError as err:
            log.warning("cannot read the kernel counters: %s", err)
            return None

    def _enable_accounting_locked(self) -> None:
        # After an apply: conntrack's setting exists once its module is loaded, which
        # our table's ct expressions make sure of.
        if self._accounting or self._conntrack is None:
            return
        try:
            self._conntrack.enable_accounting()
        except NftError as err:
            log.error("conntrack cannot count packets, kernel flows are not seen as use: %s", err)
            return
        self._accounting = True

    def _report_used(self) -> None:
        with self._lock:
            current = self.plan if self._applied else None
        if current is None or not current.services or self._conntrack is None:
            self._pace.nothing_to_list()
            return
        if not self._pace.due():
            return
        started = self._clock()
        self._pace.begin()
        try:
            listing = self._conntrack.listing()
        except NftError as err:
            self._pace.failed(self._clock() - started)
            self._stats["kernel_use_read_errors"] += 1
            log.warning("cannot read which kernel flows carried packets: %s", err)
            return
        service_ips, self._flow_packets = used_destinations(
            self._flow_packets, parse_listing(listing), current.service_ips()
        )
        cost = self._clock() - started
        jobs: set[str] = set()
        for service_ip in service_ips:
            jobs.update(current.jobs_of(service_ip))
        if jobs:
            self._stats["kernel_used_reports"] += 1
            self._on_used(sorted(jobs))
        # Only now: until the use is reported, the idle rule must look back to the last listing.
        self._pace.listed(started, cost)


def _service_flows(table: list[dict[str, Any]]) -> dict[str, int]:
    """New connections per service chain (the packets their DNAT counters saw)."""
    return {c: n for c, n in chain_packets(table).items() if c.startswith("service_")}


def _union(old: TunnelSpec | None, new: TunnelSpec) -> TunnelSpec:
    """`new` plus the peers (and subnets) only `old` has."""
    if old is None or (old.local_ip, old.port, old.bridge) != (new.local_ip, new.port, new.bridge):
        return new
    merged: dict[str, set[str]] = {}
    for peer in (*old.peers, *new.peers):
        merged.setdefault(peer.node_ip, set()).update(peer.subnets)
    peers = tuple(sorted(TunnelPeer(n, sorted_subnets(s)) for n, s in merged.items()))
    return TunnelSpec(new.local_ip, new.port, new.mtu, peers, bridge=new.bridge)


def _takes_away(old: KernelPlan, new: KernelPlan) -> bool:
    """Whether `new` stops serving a service IP `old` serves, or drops one of its
    targets, i.e. whether the old rules would send new connections where they must not go."""
    kept = {s.service_ip: set(s.targets) for s in new.services}
    return any(
        s.service_ip not in kept or not set(s.targets) <= kept[s.service_ip] for s in old.services
    )


def kernel_factory(inner_factory: DataPlaneFactory, bridge: str) -> DataPlaneFactory:
    """A factory building `inner_factory`'s backend wrapped in a KernelBackend whose nft
    runs behind the same `netns_exec` as the data-plane process; with `on_tunnel` it
    runs the kernel tunnel on the port after the tunnel port."""

    def build(options: DataPlaneOptions) -> DataPlaneBackend:
        # The VXLAN device cannot seal: with a tunnel key everything stays on the TUN.
        o = options
        usable = o.on_tunnel is not None and not o.tunnel_key and 0 < o.port < 65535
        tunnel_port = port_of(o.port) if usable else 0
        inner = inner_factory(replace(o, vxlan=bool(tunnel_port), on_tunnel=None))
        return KernelBackend(
            inner,
            Nft(o.netns_exec),
            bridge=bridge,
            on_used=o.on_used,
            conntrack=Conntrack(o.netns_exec),
            tunnel_port=tunnel_port,
            tunnel_mtu=o.mtu,
            on_tunnel=o.on_tunnel,
            defer_additions=True,
        )

    return build
