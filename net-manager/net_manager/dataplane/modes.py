"""The data-plane mode of the node config (`tun`, `kernel`, `auto`) as a factory.

`tun`: the TUN proxy alone. `kernel`: the TUN proxy wrapped in the kernel fast path
(`dataplane.kernel`). `auto`: kernel when `nft` is installed and the kernel of the
node's namespace takes our ruleset (checked when the backend is built, inside that
namespace), else tun. A backend's `mode` attribute (none: tun) is shown in status.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from net_manager.dataplane.backend import (
    DataPlaneBackend,
    DataPlaneFactory,
    ResolveCallback,
    TunnelCallback,
    UsedCallback,
)
from net_manager.dataplane.kernel.backend import kernel_factory
from net_manager.dataplane.kernel.nft import Nft
from net_manager.dataplane.supervisor import DataPlaneSupervisor
from net_manager.node.names import BRIDGE

log = logging.getLogger(__name__)
MODES = ("tun", "kernel", "auto")


def factory_for(mode: str, inner: DataPlaneFactory = DataPlaneSupervisor) -> DataPlaneFactory:
    """The factory of a mode (ValueError for another name)."""
    if mode not in MODES:
        raise ValueError(f"data-plane mode must be one of {', '.join(MODES)}, not {mode!r}")
    kernel = kernel_factory(inner, BRIDGE)

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
        vxlan: bool = False,
        on_tunnel: TunnelCallback | None = None,
    ) -> DataPlaneBackend:
        chosen = mode
        if mode == "auto":
            ok, why = Nft(netns_exec).supported()
            chosen = "kernel" if ok else "tun"
            if not ok:
                log.warning("kernel data plane not available, using the TUN only: %s", why)
        if chosen != "kernel":
            return inner(
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
        return kernel(
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
            on_tunnel=on_tunnel,
        )

    return build
