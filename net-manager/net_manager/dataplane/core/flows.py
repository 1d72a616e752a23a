"""The flow table and the fragment map: bounded, expiring indexes of translations in use.

FlowTable keeps each flow under its 5-tuple (stickiness: the policy is asked only for
new flows) and under the 5-tuple its replies carry (the reverse translation). It is
bounded: a full table refuses new flows (the caller counts the refusal; the periodic
expire() frees idle ones), and it counts the flows of each owner (the local instance
that opened them) so the caller can hold every instance to a quota. FragmentMap
remembers what the first fragment of a datagram was translated with, so later
fragments are translated the same way; when full it forgets the oldest datagram. What
a flow rewrites is translate.py's business, which endpoint it goes to is policies.py's.
No I/O; time comes from the caller or a clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from ipaddress import ip_address
from typing import Generic, Protocol, TypeVar

FlowKey = tuple[int, bytes, int, bytes, int]  # (proto, src ip, src port, dst ip, dst port)


class FlowLike(Protocol):
    """What the table needs from a flow; translate.Flow carries the rewrite on top."""

    key: FlowKey
    reverse_key: FlowKey
    endpoint_ip: bytes  # the namespace IP the flow goes to (packed)
    owner: str  # the local instance that opened it (per-instance quota)
    last_used: float


F = TypeVar("F", bound=FlowLike)
V = TypeVar("V")


class FlowTable(Generic[F]):
    """Flows by 5-tuple and by reply 5-tuple; at most max_flows, idle ones expire."""

    def __init__(
        self,
        *,
        max_flows: int = 65536,
        idle_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_flows < 1:
            raise ValueError(f"flow table needs max_flows >= 1, got {max_flows}")
        if idle_timeout <= 0:
            raise ValueError(f"flow table needs idle_timeout > 0, got {idle_timeout}")
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._forward: dict[FlowKey, F] = {}
        self._reverse: dict[FlowKey, F] = {}
        self._owned: dict[str, int] = {}  # owner -> flows in the table

    def __len__(self) -> int:
        return len(self._forward)

    @property
    def full(self) -> bool:
        return len(self._forward) >= self.max_flows

    def owned(self, owner: str) -> int:
        """How many flows of the table owner opened."""
        return self._owned.get(owner, 0)

    def get(self, key: FlowKey) -> F | None:
        return self._forward.get(key)

    def get_reverse(self, reverse_key: FlowKey) -> F | None:
        return self._reverse.get(reverse_key)

    def add(self, flow: F) -> None:
        """Index flow; replaces a flow with the same key. Raises if the table is full."""
        old = self._forward.get(flow.key)
        if old is not None:
            self.remove(old)
        elif self.full:
            raise OverflowError(f"flow table full ({self.max_flows} flows)")
        self._forward[flow.key] = flow
        # Two flows can share a reply 5-tuple (same client socket to two service IPs
        # backed by the same instance); the replies cannot tell them apart: newest wins.
        self._reverse[flow.reverse_key] = flow
        self._owned[flow.owner] = self._owned.get(flow.owner, 0) + 1

    def remove(self, flow: F) -> None:
        if self._forward.get(flow.key) is flow:
            del self._forward[flow.key]
            left = self._owned[flow.owner] - 1
            if left:
                self._owned[flow.owner] = left
            else:
                del self._owned[flow.owner]
        if self._reverse.get(flow.reverse_key) is flow:
            del self._reverse[flow.reverse_key]

    def retain(self, keep: Callable[[F], bool]) -> int:
        """Remove every flow for which keep(flow) is false; return how many."""
        gone = [flow for flow in self._forward.values() if not keep(flow)]
        for flow in gone:
            self.remove(flow)
        return len(gone)

    def expire(self, now: float | None = None) -> int:
        """Remove flows idle for more than idle_timeout; return how many."""
        deadline = (self._clock() if now is None else now) - self.idle_timeout
        return self.retain(lambda flow: flow.last_used >= deadline)

    def purge_endpoint(self, namespace_ip: str) -> int:
        """Remove the flows going to an instance that left; return how many."""
        try:
            packed = ip_address(namespace_ip).packed
        except ValueError:
            raise ValueError(f"cannot purge flows to {namespace_ip!r}: not an IP") from None
        return self.retain(lambda flow: flow.endpoint_ip != packed)


class FragmentMap(Generic[V]):
    """What the first fragment of each datagram was translated with, for a short while."""

    def __init__(self, *, max_entries: int = 1024, timeout: float = 5.0) -> None:
        if max_entries < 1 or timeout <= 0:
            raise ValueError(
                f"fragment map needs max_entries >= 1 and timeout > 0, got "
                f"{max_entries} and {timeout}"
            )
        self.max_entries = max_entries
        self.timeout = timeout
        self._entries: dict[object, tuple[V, float]] = {}  # key -> (value, deadline)

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, key: object, value: V, now: float) -> None:
        entries = self._entries
        if entries.pop(key, None) is None and len(entries) >= self.max_entries:
            del entries[next(iter(entries))]  # insertion order: the oldest datagram
        entries[key] = (value, now + self.timeout)

    def find(self, key: object, now: float) -> tuple[V, float] | None:
        """The (value, deadline) recorded for key, or None if unknown or expired."""
        entry = self._entries.get(key)
        if entry is not None and entry[1] < now:
            del self._entries[key]
            return None
        return entry

    def expire(self, now: float) -> int:
        entries = self._entries
        gone = 0
        # Deadlines grow with insertion order (record() re-inserts), so stop at the first live one.
        while entries:
            key = next(iter(entries))
            if entries[key][1] >= now:
                break
            del entries[key]
            gone += 1
        return gone
