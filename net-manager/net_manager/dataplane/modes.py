"""The data-plane mode of the node config (`tun`, `kernel`, `auto`) as a factory.

`tun`: the TUN proxy alone. `kernel`: the TUN proxy wrapped in the kernel fast path
(`dataplane.kernel`). `auto`: kernel when `nft` is installed and the kernel of the
node's namespace takes our ruleset (checked when the backend is built, inside that
namespace), else tun. A backend's `mode` attribute (none: tun) is shown in status.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from net_manager.dataplane.backend import DataPlaneBackend, DataPlaneFactory, DataPlaneOptions
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

    def build(options: DataPlaneOptions) -> DataPlaneBackend:
        chosen = mode
        if mode == "auto":
            ok, why = Nft(options.netns_exec).supported()
            chosen = "kernel" if ok else "tun"
            if not ok:
                log.warning("kernel data plane not available, using the TUN only: %s", why)
        if chosen != "kernel":
            return inner(replace(options, vxlan=False, on_tunnel=None))
        return kernel(options)

    return build
