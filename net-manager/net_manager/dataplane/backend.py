"""The one seam between the control layer and a data plane: `DataPlaneBackend`.

The control layer (NodeDaemon) only ever talks to a data plane through this interface.
The TUN proxy (`supervisor.DataPlaneSupervisor`, which runs the `io` process and talks
to it over `channel`) implements it today; a kernel fast path can implement it too and
be chosen by configuration, without the control layer changing.

A backend is built by a `DataPlaneFactory` from one `DataPlaneOptions`: the TUN device,
its addresses, MTU, tunnel port, the share of the flow table one local instance may
hold, the tunnel key (empty: a plain tunnel, as upstream's), `vxlan` (the kernel
backend's inner TUN proxy announces the kernel tunnel to its peers) and the callbacks:
- `on_resolve(service_ip, reply)`: a packet went to a service IP the data plane has no
  entry for; the control layer asks the cluster and calls `reply(found)` once, from any
  thread; a backend replays what it queued for that service IP after the next table.
- `on_used(job_names)`: which services carried traffic since the last report (interests).
- `on_tunnel(spec)` (optional; only the kernel backend uses it): make the kernel tunnel
  between our nodes match `spec` (None: remove it) before returning; KernelError if not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.node.tunnel import TunnelSpec

ResolveCallback = Callable[[str, Callable[[bool], None]], None]
UsedCallback = Callable[[list[str]], None]
TunnelCallback = Callable[[TunnelSpec | None], None]


class DataPlaneBackend(Protocol):
    """What the control layer needs from a data plane."""

    rtt: dict[str, float]  # node_ip -> round trip seconds, for the Closest policy and status

    @property
    def peer_capabilities(self) -> dict[str, int]:
        """node_ip -> the capabilities its last probe echo announced (probes.CAP_*)."""

    def start(self) -> None:
        """Start moving packets (returns at once; the backend keeps itself running)."""

    def stop(self) -> None:
        """Stop moving packets and release what start() took."""

    def push_snapshot(
        self, services: list[ServiceEntry], local_instances: list[Endpoint], node_ip: str
    ) -> None:
        """Replace the whole service table the data plane translates with."""

    def counters(self) -> dict[str, int | float]:
        """Packet and error counters for status and metrics; they only grow."""

    def use_lag(self) -> float:
        """Seconds by which `on_used` may lag behind the traffic beyond its usual second
        (0: none); the idle rule looks back that far (`Interests.expired`)."""


@dataclass(frozen=True, kw_only=True)
class DataPlaneOptions:
    """What a backend is built from (see the module doc); `tun_name` None: no TUN
    device (tests); `netns_exec`: the command prefix that runs a program in the node's
    namespace (None: this one)."""

    tun_name: str | None
    tun_v4_cidr: str
    tun_v6_cidr: str
    mtu: int
    port: int
    on_resolve: ResolveCallback
    on_used: UsedCallback
    netns_exec: Sequence[str] | None = None
    flow_quota: float = 0.25
    tunnel_key: str = field(default="", repr=False)  # a secret: never in a log line
    vxlan: bool = False
    on_tunnel: TunnelCallback | None = None


class DataPlaneFactory(Protocol):
    """Builds a backend."""

    def __call__(self, options: DataPlaneOptions) -> DataPlaneBackend:
        """A backend, not started yet."""
