"""Packets waiting for an address to be resolved (the miss queues; no I/O).

Two queues use this: packets a container sent to a service IP the table lacks, and
tunnelled packets whose source may be the instance IP of a caller this node never
resolved (tunnel admission). Both wait for the same Resolve / Resolved exchange.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sized
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class RateLimiter:
    """A token bucket per owner: `burst` at once, then `rate` per second.

    At most max_owners buckets are kept (the least recently used is forgotten, which
    only ever gives an owner a fresh, full bucket)."""

    def __init__(self, *, rate: float, burst: float, max_owners: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_owners < 1:
            raise ValueError(f"rate limiter needs rate > 0, burst >= 1: {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self.max_owners = max_owners
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def allow(self, owner: str, now: float) -> bool:
        """Take a token of owner's bucket if there is one."""
        tokens, at = self._buckets.pop(owner, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1
        self._buckets[owner] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self.max_owners:
            self._buckets.popitem(last=False)
        return allowed


class PendingPackets(Generic[T]):
    """Packets waiting for their address to be resolved; bounded per IP and in total.

    add() says what to do with a packet to an unknown address: "resolve" (queued, and
    the first for this IP: ask the control side), "queued", or a drop reason
    ("queue_full"; "unresolved" while a negative answer is fresh; "miss_rate_limited"
    when the owner, e.g. a container, asks for too many new addresses, or all owners
    together exceed the overall limit). An address the control side found nothing for
    is refused for negative_ttl seconds. A packet is any item; size_of gives the bytes
    it holds. No I/O.
    """

    def __init__(
        self,
        *,
        per_ip: int,
        total: int,
        timeout: float,
        negative_ttl: float,
        total_bytes: int = 8 * 1024 * 1024,
        limiter: RateLimiter | None = None,
        overall: RateLimiter | None = None,
        size_of: Callable[[T], int] = lambda packet: len(cast(Sized, packet)),
    ) -> None:
        self.per_ip = per_ip
        self.total = total
        self.total_bytes = total_bytes
        self.timeout = timeout
        self.negative_ttl = negative_ttl
        self.limiter = limiter
        self.overall = overall  # one bucket for every owner together
        self._size_of = size_of
        self._queues: dict[str, tuple[float, deque[T]]] = {}  # ip -> (deadline, packets)
        self._negative: dict[str, float] = {}  # ip -> until when "not found" holds
        self.count = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.count

    @property
    def service_ips(self) -> list[str]:
        return list(self._queues)

    def add(self, service_ip: str, packet: T, now: float, owner: str = "") -> str:
        until = self._negative.get(service_ip)
        if until is not None:
            if now < until:
                return "unresolved"
            del self._negative[service_ip]
        entry = self._queues.get(service_ip)
        size = self._size_of(packet)
        if (
            self.count >= self.total
            or self.bytes + size > self.total_bytes
            or (entry is not None and len(entry[1]) >= self.per_ip)
        ):
            return "queue_full"
        if entry is None and not self._allowed(owner, now):
            return "miss_rate_limited"
        self.count += 1
        self.bytes += size
        if entry is None:
            self._queues[service_ip] = (now + self.timeout, deque([packet]))
            return "resolve"
        entry[1].append(packet)
        return "queued"

    def _allowed(self, owner: str, now: float) -> bool:
        if self.limiter is not None and not self.limiter.allow(owner, now):
            return False
        return self.overall is None or self.overall.allow("", now)

    def take(self, service_ip: str) -> list[T]:
        """Remove and return the packets waiting for service_ip."""
        entry = self._queues.pop(service_ip, None)
        if entry is None:
            return []
        self.count -= len(entry[1])
        self.bytes -= sum(map(self._size_of, entry[1]))
        return list(entry[1])

    def put_back(self, service_ip: str, packets: list[T], deadline: float) -> None:
        """Re-queue packets that still miss, keeping their deadline (no new Resolve)."""
        if packets:
            self._queues[service_ip] = (deadline, deque(packets))
            self.count += len(packets)
            self.bytes += sum(map(self._size_of, packets))

    def deadline(self, service_ip: str) -> float:
        entry = self._queues.get(service_ip)
        return entry[0] if entry is not None else 0.0

    def fail(self, service_ip: str, now: float) -> int:
        """The control side found nothing: drop the packets, refuse the IP for a while."""
        self._negative[service_ip] = now + self.negative_ttl
        return len(self.take(service_ip))

    def expire(self, now: float) -> int:
        """Drop the packets of misses not answered in time; return how many."""
        dropped = 0
        for service_ip in [ip for ip, (deadline, _) in self._queues.items() if deadline <= now]:
            dropped += len(self.take(service_ip))
        for service_ip in [ip for ip, until in self._negative.items() if until <= now]:
            del self._negative[service_ip]
        return dropped
