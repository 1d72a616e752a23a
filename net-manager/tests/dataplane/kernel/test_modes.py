"""The data-plane mode switch: which backend each mode builds (no root needed)."""

from __future__ import annotations

import pytest
from nm_fakes import FakeDataPlane

from net_manager.dataplane import modes
from net_manager.dataplane.kernel import nft as nft_module
from net_manager.dataplane.kernel.backend import KernelBackend


def build(mode: str):
    factory = modes.factory_for(mode, inner=FakeDataPlane)
    return factory(
        None, "10.19.1.254/12", "fcef::dead:beef/7", 1450, 50103,
        on_resolve=lambda ip, reply: reply(False), on_used=lambda jobs: None,
    )  # fmt: skip


def test_tun_is_the_proxy_alone():
    backend = build("tun")
    assert isinstance(backend, FakeDataPlane)
    assert getattr(backend, "mode", "tun") == "tun"


def test_kernel_wraps_the_proxy():
    backend = build("kernel")
    assert isinstance(backend, KernelBackend) and backend.mode == "kernel"
    assert isinstance(backend.inner, FakeDataPlane)


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
