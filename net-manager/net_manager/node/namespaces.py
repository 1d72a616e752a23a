"""Named namespaces (/run/netns/<name>) the net manager creates for unikernels.

Ours carry a mark (the alias of their loopback device: NETNS_MARK, plus the node
namespace's name when the Kernel works on one), so only namespaces this node created
are ever deleted or swept.
"""

from __future__ import annotations

import os

from net_manager.node.base import KernelBase
from net_manager.node.errors import KernelError, NamespaceNotFound
from net_manager.node.names import NETNS_NAME, NETNS_RUN_DIR
from net_manager.node.netlink import closing_iproute, namespace_exists, netlink_errors, require_link


class NamespaceOps(KernelBase):
    """Create, delete and list the named namespaces we own."""

    def named_netns_path(self, name: str) -> str:
        """The file of the named namespace `name`: /run/netns/<prefix><name>."""
        return os.path.join(NETNS_RUN_DIR, self._full_netns_name(name))

    def _full_netns_name(self, name: object) -> str:
        if not isinstance(name, str) or not NETNS_NAME.fullmatch(name):
            raise ValueError(
                f"invalid namespace name {name!r} (letters, digits, '_', '.', '-'; "
                "at most 200 characters)"
            )
        return self.named_netns_prefix + name

    def ensure_named_netns(self, name: str) -> str:
        """The named namespace `name` exists, created and marked by us; its path.

        One of that name we did not create is not taken over: KernelError.
        """
        full = self._full_netns_name(name)
        path = os.path.join(NETNS_RUN_DIR, full)
        with self._lock:
            if namespace_exists(path):
                if not _is_marked(path, self.netns_mark):
                    raise KernelError(
                        f"network namespace {full} exists but was not created by this net "
                        "manager: delete it (ip netns delete) or undeploy its user first"
                    )
                return path
            self._run(["ip", "netns", "add", full])
            try:
                _mark_netns(path, self.netns_mark)
            except KernelError:
                self._run(["ip", "netns", "delete", full], check=False)
                raise
        return path

    def delete_named_netns(self, name: str) -> bool:
        """Delete the named namespace `name` if we created it; True if it was deleted.

        A missing one is fine; one of that name we did not create is left alone.
        """
        full = self._full_netns_name(name)
        path = os.path.join(NETNS_RUN_DIR, full)
        with self._lock:
            try:
                if not _is_marked(path, self.netns_mark):
                    return False
            except NamespaceNotFound:
                return False
            result = self._run(["ip", "netns", "delete", full], check=False)
        if result.returncode != 0 and namespace_exists(path):
            raise KernelError(f"cannot delete network namespace {full}: {result.stderr.strip()}")
        return True

    def list_named_netns(self) -> list[str]:
        """Names (prefix removed) of the named namespaces this node created."""
        try:
            entries = sorted(os.listdir(NETNS_RUN_DIR))
        except FileNotFoundError:
            return []
        prefix = self.named_netns_prefix
        ours = []
        for entry in entries:
            name = entry[len(prefix) :]
            if not entry.startswith(prefix) or not NETNS_NAME.fullmatch(name):
                continue
            try:
                if _is_marked(os.path.join(NETNS_RUN_DIR, entry), self.netns_mark):
                    ours.append(name)
            except KernelError:
                continue  # gone meanwhile, or a stale file that is no namespace
        return ours


def _mark_netns(netns_path: str, mark: str) -> None:
    with closing_iproute(netns_path) as ipr:
        lo = require_link(ipr, "lo", f"cannot mark {netns_path}")
        with netlink_errors(f"cannot mark {netns_path} as ours"):
            ipr.link("set", index=lo.index, ifalias=mark)


def _is_marked(netns_path: str, mark: str) -> bool:
    """True if the namespace carries `mark`; NamespaceNotFound if there is none."""
    with closing_iproute(netns_path) as ipr:
        with netlink_errors(f"cannot read the loopback device of {netns_path}"):
            msgs = ipr.link("get", ifname="lo")
    return msgs[0].get_attr("IFLA_IFALIAS") == mark
