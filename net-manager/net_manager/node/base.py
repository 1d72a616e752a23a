"""What every group of kernel operations shares: the namespace worked on, one netlink
socket into it and the lock serialising changes, and running tools there."""

from __future__ import annotations

import threading
from typing import Any, Self

from net_manager.node.commands import run_command
from net_manager.node.errors import KernelError, NamespaceNotFound
from net_manager.node.names import NETNS_MARK, NETNS_NAME
from net_manager.node.netlink import OwnThreadIPRoute, netns_file, same_file


class KernelBase:
    """Kernel state of one node namespace (None: the current one) and its containers."""

    def __init__(self, netns: str | None = None, *, named_netns_prefix: str = "") -> None:
        """`named_netns_prefix` goes in front of the named namespaces this Kernel creates
        (tests: "oakt-…-"; production: none, the node engine expects the bare name)."""
        if named_netns_prefix and not NETNS_NAME.fullmatch(named_netns_prefix):
            raise ValueError(f"invalid named namespace prefix {named_netns_prefix!r}")
        self.netns = netns
        self.netns_path = None if netns is None else netns_file(netns)
        self.where = "the current namespace" if netns is None else f"namespace {netns}"
        self.named_netns_prefix = named_netns_prefix
        self.netns_mark = NETNS_MARK if netns is None else f"{NETNS_MARK} {netns}"
        self._lock = threading.RLock()
        self._ipr = OwnThreadIPRoute(self.netns_path)
        # What the firewall last wrote, and read back, per target (see iptables.py).
        self._applied: dict[tuple[Any, ...], tuple[str, Any]] = {}

    def close(self) -> None:
        with self._lock:
            self._ipr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def is_node_namespace(self, netns_path: str) -> bool:
        """Whether `netns_path` is the node's own namespace (a host-networking container);
        NamespaceNotFound if it does not exist."""
        node = self.netns_path or "/proc/self/ns/net"
        try:
            return same_file(netns_path, node)
        except OSError:
            raise NamespaceNotFound(f"network namespace {netns_path} not found") from None

    def _check_not_node(self, netns_path: str) -> None:
        """Refuse a "container" that shares the node's namespace (host networking): its
        configuration would replace the node's own default route."""
        if self.is_node_namespace(netns_path):
            raise KernelError(
                f"{netns_path} is the node's own network namespace (host networking?): "
                "refusing to configure it as a container"
            )

    def _run(self, argv: list[str], *, check: bool = True, stdin: str | None = None):
        return run_command(self.netns_path, self.where, argv, check=check, stdin=stdin)

    def _run_in(self, netns_path: str, where: str, argv: list[str], *, stdin: str | None = None):
        """Run `argv` in another namespace (a unikernel's), not the node's."""
        return run_command(netns_path, where, argv, stdin=stdin)
