"""Namespace addresses of one node subnet: 61 IPv4 and 254 IPv6 container addresses.

Handed out in order; a freed address goes to the back of a FIFO, so it is reused as
late as possible (a peer's stale table entry must not reach a new container early).
Plain data so the state file can persist it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from oakestra_net.addressing import (
    CONTAINERS_PER_NODE_V4,
    CONTAINERS_PER_NODE_V6,
    container_address,
)


class AddressesExhausted(RuntimeError):
    pass


@dataclass
class _Family:
    size: int
    next_index: int = 0
    free: deque[int] = field(default_factory=deque)

    def take(self) -> int:
        if self.next_index < self.size:
            self.next_index += 1
            return self.next_index - 1
        if self.free:
            return self.free.popleft()
        raise AddressesExhausted(f"all {self.size} container addresses of this node are in use")

    def give_back(self, index: int) -> None:
        if 0 <= index < self.next_index and index not in self.free:
            self.free.append(index)


class ContainerAddresses:
    def __init__(self, subnet_v4: str, subnet_v6: str) -> None:
        self.subnet_v4 = subnet_v4
        self.subnet_v6 = subnet_v6
        self._v4 = _Family(CONTAINERS_PER_NODE_V4)
        self._v6 = _Family(CONTAINERS_PER_NODE_V6)

    def take(self) -> tuple[str, str]:
        v4 = self._v4.take()
        try:
            v6 = self._v6.take()
        except AddressesExhausted:
            self._v4.give_back(v4)
            raise
        return container_address(self.subnet_v4, v4), container_address(self.subnet_v6, v6)

    def give_back(self, namespace_ip: str, namespace_ip_v6: str) -> None:
        self._v4.give_back(_index(self.subnet_v4, namespace_ip))
        self._v6.give_back(_index(self.subnet_v6, namespace_ip_v6))

    def mark_used(self, namespace_ip: str, namespace_ip_v6: str) -> None:
        """Re-adopt addresses of containers found alive after a restart."""
        for family, subnet, address in (
            (self._v4, self.subnet_v4, namespace_ip),
            (self._v6, self.subnet_v6, namespace_ip_v6),
        ):
            index = _index(subnet, address)
            if index in family.free:
                family.free.remove(index)
            family.next_index = max(family.next_index, index + 1)

    def to_dict(self) -> dict:
        return {
            "v4": {"next": self._v4.next_index, "free": list(self._v4.free)},
            "v6": {"next": self._v6.next_index, "free": list(self._v6.free)},
        }

    def load(self, data: dict) -> None:
        for family, key in ((self._v4, "v4"), (self._v6, "v6")):
            family.next_index = int(data[key]["next"])
            family.free = deque(int(i) for i in data[key]["free"])


def _index(subnet: str, address: str) -> int:
    import ipaddress

    return int(ipaddress.ip_address(address)) - int(ipaddress.ip_address(subnet)) - 2
