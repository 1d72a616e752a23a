"""The data-plane mode switch: which backend each mode builds (no root needed)."""

from __future__ import annotations

import pytest
from nm_fakes import FakeDataPlane

from net_manager.dataplane import modes
from net_manager.dataplane.backend import DataPlaneOptions
from net_manager.dataplane.kernel import nft as nft_module
from net_manager.dataplane.kernel.backend import KernelBackend


def build(mode: str, **options):
    factory = modes.factory_for(mode, inner=FakeDataPlane)
    return factory(
        DataPlaneOptions(
            tun_name=None,
            tun_v4_cidr="10.19.1.254/12",
            tun_v6_cidr="fcef::dead:beef/7",
            mtu=1450,
            port=50103,
            on_resolve=lambda ip, reply: reply(False),
            on_used=lambda jobs: None,
            **options,
        )
    )


def on_tunnel(spec) -> None:
    pass


def test_tun_is_the_proxy_alone():
    backend = build("tun")
    assert isinstance(backend, FakeDataPlane)
    assert getattr(backend, "mode", "tun") == "tun"


def test_kernel_wraps_the_proxy():
    backend = build("kernel")
    assert isinstance(backend, KernelBackend) and backend.mode == "kernel"
    assert isinstance(backend.inner, FakeDataPlane)


def test_kernel_with_a_tunnel_callback_runs_the_tunnel_and_its_proxy_announces_it():
    backend = build("kernel", on_tunnel=on_tunnel, flow_quota=0.5)
    assert backend._tunnel_port == 50104
    inner = backend.inner
    assert inner.vxlan and inner.options.on_tunnel is None  # the proxy has no tunnel
    assert inner.flow_quota == 0.5 and inner.args[4] == 50103


def test_a_tunnel_key_keeps_the_kernel_tunnel_off():
    backend = build("kernel", on_tunnel=on_tunnel, tunnel_key="ab" * 32)
    assert backend._tunnel_port == 0 and not backend.inner.vxlan
    assert "ab" * 32 not in repr(backend.inner.options)  # the key never reaches a log line


def test_tun_mode_never_announces_the_kernel_tunnel():
    backend = build("tun", on_tunnel=on_tunnel, vxlan=True)
    assert not backend.vxlan and backend.options.on_tunnel is None


def test_auto_without_nft_is_tun(monkeypatch):
    monkeypatch.setattr(nft_module.shutil, "which", lambda name: None)
    assert isinstance(build("auto"), FakeDataPlane)


def test_auto_with_a_kernel_that_refuses_is_tun(monkeypatch):
    monkeypatch.setattr(nft_module.shutil, "which", lambda name: "/usr/sbin/nft")
    monkeypatch.setattr(nft_module.Nft, "apply", _refuse)
    assert isinstance(build("auto"), FakeDataPlane)


def test_auto_with_support_is_kernel(monkeypatch):
    monkeypatch.setattr(nft_module.Nft, "supported", lambda self: (True, ""))
    assert isinstance(build("auto"), KernelBackend)


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="tun, kernel, auto"):
        modes.factory_for("ebpf")


def _refuse(self, script, *, check_only=False):
    raise nft_module.NftError("Error: Could not process rule: No such file or directory")
