"""Who holds which address, as the root's answers said: the chaos test's memory.

`AddressLedger` records every address the root hands out (service IPs of a service,
instance IPs of an instance) under its owner, and what is *in use*: the instance IPs of
running instances and the service IPs of services with at least one running
instance, i.e. what a node can route to. An address handed out while another owner
has it in use is a violation (two services behind one address: misrouted traffic).
An address handed out again that only an idle service held (the root may forget a
service nobody caches, and says so with a 404 later) is a note, not a violation.
Pure bookkeeping, thread-safe, no I/O.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Holding:
    owner: str  # "job" for service IPs, "job.n" for instance IPs
    job: str
    running: bool = False  # instance IPs: the instance runs


@dataclass
class AddressLedger:
    holdings: dict[str, Holding] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def _in_use(self, holding: Holding) -> bool:
        if holding.owner != holding.job:  # an instance IP
            return holding.running
        return any(
            h.running for h in self.holdings.values() if h.job == holding.job and h.owner != h.job
        )

    def claim(self, addresses: list[str], owner: str, job: str, what: str) -> None:
        """The root handed `addresses` to `owner` (of `job`) in answer to `what`."""
        with self._lock:
            for address in filter(None, addresses):
                held = self.holdings.get(address)
                if held is not None and held.owner != owner:
                    text = f"{what}: {address} given to {owner}, but {held.owner} holds it"
                    if self._in_use(held):
                        self.violations.append(text + " and it is in use")
                    else:
                        self.notes.append(text + " (idle: the root may have forgotten it)")
                self.holdings[address] = Holding(owner, job)

    def run(self, owner: str) -> None:
        """The instance `owner` runs (its instance IPs are in use)."""
        with self._lock:
            for holding in self.holdings.values():
                if holding.owner == owner:
                    holding.running = True

    def release(self, owner: str) -> None:
        """`owner` gave its addresses back (undeployed, removed, or forgotten)."""
        with self._lock:
            for address in [a for a, h in self.holdings.items() if h.owner == owner]:
                del self.holdings[address]

    def owner_of(self, address: str) -> str | None:
        with self._lock:
            held = self.holdings.get(address)
            return held.owner if held else None

    def in_use(self) -> dict[str, str]:
        """address -> owner, for every address a node may route to."""
        with self._lock:
            return {a: h.owner for a, h in self.holdings.items() if self._in_use(h)}


def table_conflicts(tables: dict[str, list[dict]], live: set[str]) -> list[str]:
    """Addresses the nodes' tables give to two different owners that are both `live`
    (instance names "job.n" or job names); `tables` is node name -> status table."""
    seen: dict[str, tuple[str, str]] = {}  # address -> (owner, node)
    conflicts = []
    for node, entries in tables.items():
        for entry in entries:
            job, number = entry["job_name"], entry["instance_number"]
            pairs = [(entry.get("instance_ip"), f"{job}.{number}")]
            pairs += [(entry.get("instance_ip_v6"), f"{job}.{number}")]
            for sip in entry.get("service_ips", []):
                kind = job if sip.get("IpType") in ("RR", "Closest") else f"{job}.{number}"
                pairs += [(sip.get("Address"), kind), (sip.get("Address_v6"), kind)]
            for address, owner in pairs:
                if not address or owner not in live:
                    continue
                first = seen.setdefault(address, (owner, node))
                if first[0] != owner and first[0] in live:
                    conflicts.append(f"{address}: {first[0]} on {first[1]}, {owner} on {node}")
    return conflicts
