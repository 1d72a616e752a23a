"""Packets waiting for their service IP to be resolved (the miss queue; no I/O)."""

from __future__ import annotations

from collections import deque


class PendingPackets:
    """Packets waiting for their service IP to be resolved; bounded per IP and in total.

    add() says what to do with a packet to an unknown service IP: "resolve" (queued, and
    the first for this IP: ask the control side), "queued", or a drop reason
    ("queue_full", "unresolved" while a negative answer is fresh). No I/O.
    """

    def __init__(self, *, per_ip: int, total: int, timeout: float, negative_ttl: float) -> None:
        self.per_ip = per_ip
        self.total = total
        self.timeout = timeout
        self.negative_ttl = negative_ttl
        self._queues: dict[str, tuple[float, deque[bytes]]] = {}  # ip -> (deadline, packets)
        self._negative: dict[str, float] = {}  # ip -> until when "not found" holds
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @property
    def service_ips(self) -> list[str]:
        return list(self._queues)

    def add(self, service_ip: str, packet: bytes, now: float) -> str:
        until = self._negative.get(service_ip)
        if until is not None:
            if now < until:
                return "unresolved"
            del self._negative[service_ip]
        entry = self._queues.get(service_ip)
        if self.count >= self.total or (entry is not None and len(entry[1]) >= self.per_ip):
            return "queue_full"
        self.count += 1
        if entry is None:
            self._queues[service_ip] = (now + self.timeout, deque([packet]))
            return "resolve"
        entry[1].append(packet)
        return "queued"

    def take(self, service_ip: str) -> list[bytes]:
        """Remove and return the packets waiting for service_ip."""
        entry = self._queues.pop(service_ip, None)
        if entry is None:
            return []
        self.count -= len(entry[1])
        return list(entry[1])

    def put_back(self, service_ip: str, packets: list[bytes], deadline: float) -> None:
        """Re-queue packets that still miss, keeping their deadline (no new Resolve)."""
        if packets:
            self._queues[service_ip] = (deadline, deque(packets))
            self.count += len(packets)

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
