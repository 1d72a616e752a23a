"""Writing sysctls of a namespace, leaving values that are already right alone."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping

from net_manager.node.commands import COMMAND_TIMEOUT, nsenter
from net_manager.node.errors import KernelError, NamespaceNotFound
from net_manager.node.netlink import namespace_exists

NODE_SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/ipv6/conf/all/forwarding": "1",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
}
# Writes each key=value under /proc/sys unless it already holds that value.
_SYSCTL_SCRIPT = (
    'for kv; do k="/proc/sys/${kv%%=*}"; v="${kv#*=}"; '
    '[ "$(cat "$k")" = "$v" ] || echo "$v" > "$k" || exit 1; done'
)


def write_sysctls(netns_path: str | None, values: Mapping[str, str], where: str) -> None:
    """Set sysctls (slash-separated keys) in the namespace, leaving equal values alone."""
    for key in values:
        if ".." in key.split("/") or key.startswith("/"):
            raise ValueError(f"invalid sysctl key {key!r}")
    if netns_path is None:
        for key, value in values.items():
            _write_sysctl_here(key, value, where)
        return
    if not namespace_exists(netns_path):
        raise NamespaceNotFound(f"network namespace {netns_path} not found")
    pairs = [f"{key}={value}" for key, value in values.items()]
    argv = nsenter(netns_path, ["sh", "-c", _SYSCTL_SCRIPT, "sh", *pairs])
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KernelError(f"cannot set sysctls {', '.join(pairs)} in {where}: {err}") from None
    if result.returncode != 0:
        raise KernelError(
            f"cannot set sysctls {', '.join(pairs)} in {where}: {result.stderr.strip()}"
        )


def _write_sysctl_here(key: str, value: str, where: str) -> None:
    path = os.path.join("/proc/sys", key)
    try:
        with open(path) as current:
            if current.read().strip() == value:
                return
        with open(path, "w") as target:
            target.write(value)
    except OSError as err:
        raise KernelError(f"cannot set sysctl {key}={value} in {where}: {err.strerror}") from None
