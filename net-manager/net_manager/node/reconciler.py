"""One place makes kernel state match desired state (kube-proxy style).

Handlers record what changed and `poke()`. `sync()` is idempotent: node sysctls, bridge
and base firewall rules, then for each container its veth pair, namespace, addresses,
routes and port mappings, then a sweep deleting the links with our prefix and the
port-mapping rules that desired state does not reference (never the TUN or any name in
`keep`: the data plane owns those). A container whose namespace has vanished (its
process died) is "gone": logged once and skipped, its leftovers swept; the daemon
undeploys it. A unikernel's spec names the namespace the net manager creates for it
(`named_netns`): `sync_container` creates it, `sync_removed` deletes it, a sync never
re-creates one that vanished (that unikernel is gone) and the sweep deletes the ones we
created that desired state does not reference. The kernel tunnel between our nodes
(`tunnel`, kernel mode) is made to match too, or removed (device and fwmark rules) when
desired state has none; `sync_tunnel` applies it at once for the data plane, which
waits for it. The runner thread (`start`/`stop`)
syncs at most every `min_interval` (bursts of pokes coalesce), at least every
`max_interval` (self-healing) and again after a failure, with backoff; `run_pending(now)`
is its step, for tests with a fake clock. `sync_container`/`sync_removed` apply one
container change at once for callers that must answer with the result.

`desired` is called without holding the reconciler's lock, so it may take the caller's
own lock; a snapshot made stale by a concurrent `sync_container`/`sync_removed` is
taken again, so a sweep never deletes a container attached meanwhile. What the desired
state is belongs to the daemon; how to change the kernel to `kernel`.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from net_manager.node.kernel import (
    CONTAINER_IFNAME,
    TUN,
    KernelApi,
    KernelError,
    NamespaceNotFound,
)
from net_manager.node.tunnel import DEVICE, TunnelSpec
from oakestra_net.log import get_logger

log = get_logger(__name__)

RETRY_INITIAL = 1.0  # seconds before the first retry of a failed sync; doubles up to max
SNAPSHOT_ATTEMPTS = 10


@dataclass(frozen=True)
class ContainerSpec:
    """One container as the kernel should see it."""

    key: str
    host_veth: str
    peer_veth: str
    netns_path: str
    namespace_ip: str
    namespace_ip_v6: str | None
    port_mappings: tuple = ()
    named_netns: str | None = None  # a unikernel: the named namespace we create for it


@dataclass(frozen=True)
class NodeSpec:
    """The node's bridge, subnet and TUN; CIDRs like "10.16.0.1/26" and "10.16.0.0/26"."""

    bridge: str
    bridge_v4_cidr: str
    bridge_v6_cidr: str | None
    subnet_v4: str
    subnet_v6: str | None
    mtu: int
    tun: str


@dataclass(frozen=True)
class DesiredState:
    """Everything the kernel should hold; `node` None means not set up yet (nothing to do)."""

    node: NodeSpec | None
    containers: tuple[ContainerSpec, ...] = ()
    tunnel: TunnelSpec | None = None  # the kernel tunnel between our nodes (kernel mode)


class SyncError(KernelError):
    """A sync could not configure everything; the message names each failed container."""


def container_addressing(
    node: NodeSpec, spec: ContainerSpec
) -> tuple[str, str | None, str, str | None]:
    """(v4_cidr, v6_cidr, gw_v4, gw_v6): the container's IPs with the subnet prefixes and
    the bridge addresses as gateways; no IPv6 when the node or the container has none.
    """
    try:
        v4_cidr = f"{spec.namespace_ip}/{ipaddress.ip_network(node.subnet_v4).prefixlen}"
        gw_v4 = str(ipaddress.ip_interface(node.bridge_v4_cidr).ip)
        if not (spec.namespace_ip_v6 and node.subnet_v6 and node.bridge_v6_cidr):
            return v4_cidr, None, gw_v4, None
        v6_cidr = f"{spec.namespace_ip_v6}/{ipaddress.ip_network(node.subnet_v6).prefixlen}"
        gw_v6 = str(ipaddress.ip_interface(node.bridge_v6_cidr).ip)
    except ValueError as err:
        raise ValueError(f"invalid addressing for {spec.key}: {err}") from None
    return v4_cidr, v6_cidr, gw_v4, gw_v6


def _mapping_key(mapping: Any) -> tuple[int, int, str]:
    return mapping.host_port, mapping.container_port, mapping.protocol


class Reconciler:
    """Runs `sync()` when poked (rate limited), periodically and after failures."""

    def __init__(
        self,
        kernel: KernelApi,
        desired: Callable[[], DesiredState],
        *,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 0.2,
        max_interval: float = 30.0,
        keep: Iterable[str] = (TUN,),
    ) -> None:
        if not 0 <= min_interval <= max_interval or max_interval <= 0:
            raise ValueError(
                f"need 0 <= min_interval <= max_interval and max_interval > 0, "
                f"got {min_interval} and {max_interval}"
            )
        self.kernel = kernel
        self._desired = desired
        self._clock = clock
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.keep = frozenset(keep)
        self.sync_count = 0  # successful syncs
        self.last_error: str | None = None  # of the last sync, None after a success
        self._sync_lock = threading.RLock()  # one kernel change at a time
        self._generation = 0  # bumped by every sync_container / sync_removed
        self._node_ready: NodeSpec | None = None
        self._gone: set[str] = set()
        self._logged_error: str | None = None
        self._lock = threading.Lock()  # the runner's schedule below
        self._dirty = False
        self._last_run: float | None = None
        self._retry_at: float | None = None
        self._backoff = 0.0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- syncing ---------------------------------------------------------------

    def sync(self) -> None:
        """Make the kernel match desired state; SyncError/KernelError if some part failed."""
        try:
            with self._snapshot() as state:
                self._sync(state)
        except Exception as err:
            self._record_failure(err)
            raise
        self._record_success()

    def sweep(self) -> list[str]:
        """Delete what desired state does not reference; return what was deleted."""
        with self._snapshot() as state:
            live = [c for c in state.containers if self.kernel.namespace_exists(c.netns_path)]
            return self._sweep(state.node, live, state.tunnel)

    def sync_container(self, spec: ContainerSpec) -> None:
        """Attach one container now (node set-up first if needed); raises KernelError."""
        node = self._desired().node
        if node is None:
            raise KernelError(f"cannot attach {spec.key}: the node network is not set up yet")
        with self._sync_lock:
            self._generation += 1
            if self._node_ready != node:
                self._sync_node(node)
            if spec.named_netns is not None:
                self.kernel.ensure_named_netns(spec.named_netns)
            self._attach(node, spec)

    def sync_removed(self, spec: ContainerSpec) -> None:
        """Remove one container's port mappings and veth pair (and a unikernel's named
        namespace) now; raises KernelError."""
        with self._sync_lock:
            self._generation += 1
            for mapping in spec.port_mappings:
                self.kernel.delete_port_mapping(mapping, spec.namespace_ip, spec.namespace_ip_v6)
            self.kernel.delete_link(spec.host_veth)
            self.kernel.delete_link(spec.peer_veth)  # still here if the move never happened
            if spec.named_netns is not None:
                self.kernel.delete_named_netns(spec.named_netns)
            self._gone.discard(spec.key)

    @contextmanager
    def _snapshot(self) -> Iterator[DesiredState]:
        """Desired state, with the sync lock held and no container change since it was read."""
        for _ in range(SNAPSHOT_ATTEMPTS):
            generation = self._generation
            state = self._desired()  # outside our lock: it may take the caller's lock
            with self._sync_lock:
                if generation == self._generation:
                    yield state
                    return
        raise SyncError("desired state kept changing during the sync; retrying later")

    def _sync(self, state: DesiredState) -> None:
        if state.node is None:
            return
        self._sync_node(state.node)
        self._sync_tunnel(state.node, state.tunnel)
        live, errors = [], []
        for spec in state.containers:
            try:
                if self._sync_one(state.node, spec):
                    live.append(spec)
            except (KernelError, ValueError) as err:
                live.append(spec)  # still desired: keep its devices and rules
                errors.append(f"{spec.key}: {err}")
        self._sweep(state.node, live, state.tunnel)
        if errors:
            raise SyncError(f"cannot configure {len(errors)} container(s): " + "; ".join(errors))

    def _sync_node(self, node: NodeSpec) -> None:
        self._node_ready = None
        self.kernel.ensure_sysctls()
        self.kernel.ensure_bridge(node.bridge, node.bridge_v4_cidr, node.bridge_v6_cidr, node.mtu)
        self.kernel.ensure_base_rules(node.bridge, node.tun, node.subnet_v4, node.subnet_v6)
        self._node_ready = node

    def sync_tunnel(self, tunnel: TunnelSpec | None) -> None:
        """Make the kernel tunnel match `tunnel` now (the data plane waits for it before
        it sends anything through it); raises KernelError."""
        node = self._desired().node
        if node is None:
            raise KernelError("cannot set up the kernel tunnel: the node network is not set up")
        with self._sync_lock:
            self._generation += 1  # a sync holding an older snapshot takes it again
            self._sync_tunnel(node, tunnel)

    def _sync_tunnel(self, node: NodeSpec, tunnel: TunnelSpec | None) -> None:
        if tunnel is None:
            self.kernel.delete_tunnel(DEVICE, node.bridge)
        else:
            self.kernel.ensure_tunnel(tunnel)

    def _sync_one(self, node: NodeSpec, spec: ContainerSpec) -> bool:
        """Attach `spec`; False (and nothing raised) if its namespace is gone."""
        try:
            if not self.kernel.namespace_exists(spec.netns_path):
                raise NamespaceNotFound(f"network namespace {spec.netns_path} not found")
            self._attach(node, spec)
        except NamespaceNotFound as err:
            if spec.key not in self._gone:
                self._gone.add(spec.key)
                log.warning(
                    "container namespace gone; skipping it", instance=spec.key, reason=str(err)
                )
            return False
        self._gone.discard(spec.key)
        return True

    def _attach(self, node: NodeSpec, spec: ContainerSpec) -> None:
        v4_cidr, v6_cidr, gw_v4, gw_v6 = container_addressing(node, spec)
        kernel = self.kernel
        kernel.ensure_veth(spec.host_veth, spec.peer_veth, node.bridge, node.mtu)
        kernel.move_into_container(spec.peer_veth, spec.netns_path, CONTAINER_IFNAME)
        kernel.configure_container(
            spec.netns_path, CONTAINER_IFNAME, v4_cidr, v6_cidr, gw_v4, gw_v6, node.mtu
        )
        namespace_ip_v6 = spec.namespace_ip_v6 if v6_cidr else None
        if spec.named_netns is not None:
            kernel.configure_unikernel_inner(
                spec.netns_path, CONTAINER_IFNAME, spec.namespace_ip, namespace_ip_v6, node.mtu
            )
        for mapping in spec.port_mappings:
            kernel.ensure_port_mapping(mapping, spec.namespace_ip, namespace_ip_v6)

    def _sweep(
        self,
        node: NodeSpec | None,
        live: Sequence[ContainerSpec],
        tunnel: TunnelSpec | None = None,
    ) -> list[str]:
        keep = set(self.keep)
        if node is not None:
            keep |= {node.bridge, node.tun}
        if tunnel is not None:
            keep.add(tunnel.device)
        keep |= {name for spec in live for name in (spec.host_veth, spec.peer_veth)}
        removed = []
        for name in self.kernel.list_links():
            if name not in keep:
                self.kernel.delete_link(name)
                removed.append(name)
        wanted = {(spec.namespace_ip, _mapping_key(m)) for spec in live for m in spec.port_mappings}
        for namespace_ip, mapping in self.kernel.list_port_mappings():
            if (namespace_ip, _mapping_key(mapping)) not in wanted:
                self.kernel.delete_port_mapping(mapping, namespace_ip)
                removed.append(f"port mapping {mapping} to {namespace_ip}")
        removed += self._sweep_named_netns(live)
        if removed:
            log.info("swept kernel state nobody wants", removed=removed)
        return removed

    def _sweep_named_netns(self, live: Sequence[ContainerSpec]) -> list[str]:
        """Delete the named namespaces we created that no live unikernel uses."""
        wanted = {spec.named_netns for spec in live if spec.named_netns is not None}
        removed = []
        for name in self.kernel.list_named_netns():
            if name not in wanted:
                self.kernel.delete_named_netns(name)
                removed.append(f"namespace {name}")
        return removed

    def _record_success(self) -> None:
        self.sync_count += 1
        self.last_error = None
        if self._logged_error is not None:
            log.info("kernel sync recovered")
            self._logged_error = None

    def _record_failure(self, err: Exception) -> None:
        self.last_error = str(err) or type(err).__name__
        if self.last_error != self._logged_error:  # each distinct error once
            log.error("kernel sync failed", reason=self.last_error, error_type=type(err).__name__)
            self._logged_error = self.last_error

    # ---- runner ----------------------------------------------------------------

    def poke(self) -> None:
        """Desired state changed: sync soon (at most every min_interval)."""
        with self._lock:
            self._dirty = True
        self._wake.set()

    def seconds_until_due(self, now: float) -> float:
        """How long the runner may sleep before a sync is due (0: due now)."""
        with self._lock:
            if self._last_run is None:
                return 0.0
            due = self._last_run + self.max_interval
            earliest = self._last_run + self.min_interval
            if self._dirty:
                due = min(due, earliest)
            if self._retry_at is not None:
                due = min(due, max(self._retry_at, earliest))
            return max(0.0, due - now)

    def run_pending(self, now: float) -> bool:
        """Sync if one is due at `now`; True if a sync ran (successful or not)."""
        if self.seconds_until_due(now) > 0:
            return False
        with self._lock:
            self._last_run = now
            self._dirty = False
        try:
            self.sync()
        except Exception:  # recorded and logged by sync(); retried after a backoff
            with self._lock:
                self._backoff = min(max(self._backoff * 2, RETRY_INITIAL), self.max_interval)
                self._retry_at = now + self._backoff
        else:
            with self._lock:
                self._backoff = 0.0
                self._retry_at = None
        return True

    def start(self) -> None:
        """Start the runner thread (a second call while it runs does nothing)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the runner thread, letting a sync in progress finish."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.run_pending(self._clock())
            self._wake.wait(self.seconds_until_due(self._clock()))
            self._wake.clear()
