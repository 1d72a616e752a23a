"""The node's translation table: which instances stand behind each service IP.

A TableEntry is one instance of a job as a table query returned it: where it lives
(namespace IPs, node IP and tunnel port) and its service IPs (the job's RR / Closest IPs
and its own instance IP). The TranslationTable holds the entries of every job this node
knows, replaced job by job (a table query result is the full truth about a job), with
indexes by service IP, namespace IP and job, so each lookup is one dict access.

Rules, so the data plane always gets a consistent view even from inconsistent input:
- An entry is valid (`TableEntry.parse`) when its job name is valid, it has a namespace IP
  of at least one family (unikernels have no IPv6; upstream dropped them), a node IP, a
  node port 1-65535 and at least one service IP. Service addresses outside 10.30.0.0/16
  and fdff::/16 are left out (the proxy would never match them). Addresses are stored in
  canonical form, so lookups work with any spelling.
- Within a job, an instance number or namespace IP listed twice keeps the last entry; a
  service address keeps the IpType it has in the lowest-numbered instance listing it,
  and an instance IP belongs to one instance only (conflicting listings are left out).
- A namespace IP is one container: an entry of another job holding it is removed
  (upstream: "adding an entry first removes any entry with the same nsip").
- Two jobs may claim the same service IP (a stale job keeps an address the root gave to
  a new one); the job replaced most recently owns it, and the other claim comes back
  only if the owner lets the address go.

InstanceNumber and instance_ip are the same IpType (upstream's enum vs the cluster's
wire string); service_view() reports both as "instance_ip". Querying the cluster,
interests and pushing the table to the data plane are the daemon's job. Thread-safe.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any, NamedTuple, Self

from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from oakestra_net.addressing import SERVICE_V4, SERVICE_V6
from oakestra_net.messages import NIL_ADDRESS, ServiceIp, TableQueryInstance
from oakestra_net.names import is_valid_job_name
from oakestra_net.services import INSTANCE_IP, IP_TYPES, canonical_ip, parse_ip

_KINDS = IP_TYPES
_SERVICE_NETS: dict[int, IPv4Network | IPv6Network] = {4: SERVICE_V4, 6: SERVICE_V6}


class InvalidEntry(ValueError):
    """A table entry that breaks the validity rules; the message names the instance."""


def _typed_ip(text: object, version: int) -> str | None:
    """Canonical `text` if it is an address of `version`, "" if empty, else None."""
    if text == "":
        return ""
    parsed = parse_ip(text) if isinstance(text, str) else None
    return parsed[0] if parsed and parsed[1].version == version else None


def _service_address(text: object, version: int) -> str | None:
    """Canonical `text` if it is a service address of `version`, "" if empty, else None."""
    if text == "":
        return ""
    parsed = parse_ip(text) if isinstance(text, str) else None
    if parsed is None or parsed[1] not in _SERVICE_NETS[version]:
        return None
    return parsed[0]


@functools.lru_cache(maxsize=4096)
def _is_valid_job_name(job_name: str) -> bool:
    return is_valid_job_name(job_name)


def _known_type(ip_type: object) -> bool:
    return isinstance(ip_type, str) and ip_type in _KINDS


def ip_kind(ip_type: str) -> str:
    """The policy an IpType stands for: RR, Closest or instance_ip."""
    return _KINDS[ip_type]


@dataclass(frozen=True)
class TableEntry:
    """One instance of a job: where it lives and the service IPs that lead to it."""

    job_name: str
    instance_number: int
    namespace_ip: str
    namespace_ip_v6: str
    node_ip: str
    node_port: int
    service_ips: tuple[ServiceIp, ...]

    def __post_init__(self) -> None:
        name = f"table entry {self.job_name!r} instance {self.instance_number!r}"
        if not isinstance(self.job_name, str) or not _is_valid_job_name(self.job_name):
            raise InvalidEntry(f"{name}: invalid job name")
        number = self.instance_number
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise InvalidEntry(f"{name}: instance_number must be an integer >= 0")
        self._set_namespace_ips(name)
        node_ip = canonical_ip(self.node_ip)
        if not node_ip:
            raise InvalidEntry(f"{name}: node_ip {self.node_ip!r} is not an IP address")
        object.__setattr__(self, "node_ip", node_ip)
        port = self.node_port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65_536:
            raise InvalidEntry(f"{name}: node_port {port!r} is not a port 1-65535")
        object.__setattr__(self, "service_ips", _checked_service_ips(self.service_ips, name))

    def _set_namespace_ips(self, name: str) -> None:
        for field, version in (("namespace_ip", 4), ("namespace_ip_v6", 6)):
            text = getattr(self, field)
            canonical = _typed_ip(text, version)
            if canonical is None:
                raise InvalidEntry(f"{name}: {field} {text!r} is not an IPv{version} address")
            object.__setattr__(self, field, canonical)
        if not self.namespace_ip and not self.namespace_ip_v6:
            raise InvalidEntry(f"{name}: no namespace IP (not deployed yet?)")

    @classmethod
    def parse(cls, job_name: str, instance: TableQueryInstance) -> Self:
        """The entry for one instance of a table query result; InvalidEntry if not valid."""
        service_ips = _usable_service_ips(instance.service_ip)
        if not any(ip_kind(sip.ip_type) == INSTANCE_IP for sip in service_ips):
            # The cluster always lists the instance IP; a leaner sender may not.
            own = _usable_service_ips(
                [ServiceIp(INSTANCE_IP, instance.instance_ip, instance.instance_ip_v6)]
            )
            service_ips += own
        return cls(
            job_name=job_name,
            instance_number=instance.instance_number,
            namespace_ip=instance.namespace_ip,
            namespace_ip_v6=_not_nil(instance.namespace_ip_v6),
            node_ip=instance.host_ip,
            node_port=instance.host_port,
            service_ips=service_ips,
        )

    @classmethod
    def from_instance(cls, job_name: str, instance: TableQueryInstance) -> Self | None:
        """Like parse(), but None for an invalid instance (upstream drops them silently)."""
        try:
            return cls.parse(job_name, instance)
        except InvalidEntry:
            return None

    @property
    def instance_ip(self) -> str:
        """The IPv4 instance IP ("" if none); the last instance-type entry wins, as upstream."""
        return self._instance_address("address")

    @property
    def instance_ip_v6(self) -> str:
        return self._instance_address("address_v6")

    def to_endpoint(self) -> Endpoint:
        """This instance as the data plane addresses it."""
        return Endpoint(
            job_name=self.job_name,
            instance_number=self.instance_number,
            namespace_ip=self.namespace_ip,
            namespace_ip_v6=self.namespace_ip_v6,
            instance_ip=self.instance_ip,
            instance_ip_v6=self.instance_ip_v6,
            node_ip=self.node_ip,
            node_port=self.node_port,
        )

    def _instance_address(self, field: str) -> str:
        found = ""
        for sip in self.service_ips:
            if ip_kind(sip.ip_type) == INSTANCE_IP and getattr(sip, field):
                found = getattr(sip, field)
        return found

    @property
    def namespace_ips(self) -> tuple[str, ...]:
        """The entry's non-empty namespace IPs."""
        return tuple(ip for ip in (self.namespace_ip, self.namespace_ip_v6) if ip)

    def to_status(self) -> dict[str, Any]:
        return {
            "job_name": self.job_name,
            "instance_number": self.instance_number,
            "namespace_ip": self.namespace_ip,
            "namespace_ip_v6": self.namespace_ip_v6,
            "instance_ip": self.instance_ip,
            "instance_ip_v6": self.instance_ip_v6,
            "node_ip": self.node_ip,
            "node_port": self.node_port,
            "service_ips": [sip.to_dict() for sip in self.service_ips],
        }


def _not_nil(text: str) -> str:
    return "" if text == NIL_ADDRESS else text


def _usable_service_ips(service_ips: Iterable[ServiceIp]) -> tuple[ServiceIp, ...]:
    """The service IPs with addresses outside the service ranges left out."""
    usable = []
    for sip in service_ips:
        if not _known_type(sip.ip_type):
            continue
        address = _service_address(sip.address, 4) or ""
        address_v6 = _service_address(sip.address_v6, 6) or ""
        if address or address_v6:
            usable.append(ServiceIp(sip.ip_type, address, address_v6))
    return tuple(usable)


def _checked_service_ips(service_ips: object, name: str) -> tuple[ServiceIp, ...]:
    if not isinstance(service_ips, tuple | list) or not service_ips:
        raise InvalidEntry(f"{name}: needs at least one service IP")
    checked = []
    for sip in service_ips:
        if not isinstance(sip, ServiceIp) or not _known_type(sip.ip_type):
            raise InvalidEntry(f"{name}: {sip!r} is not a ServiceIp of a known IpType")
        address, address_v6 = _service_address(sip.address, 4), _service_address(sip.address_v6, 6)
        if address is None or address_v6 is None:
            raise InvalidEntry(
                f"{name}: {sip.ip_type} service IP {sip!r} is outside the"
                f" service ranges {SERVICE_V4} and {SERVICE_V6}"
            )
        if not address and not address_v6:
            raise InvalidEntry(f"{name}: {sip.ip_type} service IP has no address")
        same = address == sip.address and address_v6 == sip.address_v6
        checked.append(sip if same else ServiceIp(sip.ip_type, address, address_v6))
    return tuple(checked)


class ServiceView(NamedTuple):
    """One service IP (pair) with its policy and the instances behind it, for the data plane.

    service_ip or service_ip_v6 may be "" when the other family is reported apart.
    """

    service_ip: str
    service_ip_v6: str
    ip_type: str
    job_name: str
    entries: tuple[TableEntry, ...]


class _Claim(NamedTuple):
    """How one job lists one service address."""

    ip_type: str
    partner: str  # the other family's address given with it ("" if none)
    entries: tuple[TableEntry, ...]


class TranslationTable:
    """Entries of every known job, indexed by service IP, namespace IP and job."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._version = 0
        self._jobs: dict[str, tuple[TableEntry, ...]] = {}
        self._by_namespace_ip: dict[str, TableEntry] = {}
        # service address -> job -> claim; the last job in insertion order owns the address.
        self._claims: dict[str, dict[str, _Claim]] = {}
        self._job_claims: dict[str, dict[str, _Claim]] = {}
        self._view: tuple[int, list[ServiceView]] = (0, [])
        self._services: tuple[int, list[ServiceEntry]] = (0, [])

    @property
    def version(self) -> int:
        """Incremented on every change of the table."""
        return self._version

    def replace_job(self, job_name: str, entries: Iterable[TableEntry]) -> bool:
        """Make `entries` the job's only entries (none: the job goes); True if anything changed."""
        entries = tuple(entries)
        for entry in entries:
            if not isinstance(entry, TableEntry) or entry.job_name != job_name:
                raise ValueError(f"cannot put {entry!r} among the entries of job {job_name!r}")
        normalized = _normalize(entries)
        with self._lock:
            if normalized == self._jobs.get(job_name, ()):
                return False
            self._evict_namespace_ips(job_name, normalized)
            self._set_job(job_name, normalized, newest=True)
            self._version += 1
            return True

    def remove_job(self, job_name: str) -> bool:
        """Drop every entry of `job_name`; True if there were any."""
        with self._lock:
            if job_name not in self._jobs:
                return False
            self._set_job(job_name, (), newest=False)
            self._version += 1
            return True

    def remove_namespace_ip(self, namespace_ip: str) -> bool:
        """Drop the entry of the instance with this namespace IP (v4 or v6); True if found."""
        address = canonical_ip(namespace_ip)
        with self._lock:
            entry = self._by_namespace_ip.get(address) if address else None
            if entry is None:
                return False
            remaining = tuple(e for e in self._jobs[entry.job_name] if e != entry)
            self._set_job(entry.job_name, remaining, newest=False)
            self._version += 1
            return True

    def by_service_ip(self, address: str) -> tuple[TableEntry, ...]:
        """The entries behind a service IP (RR, Closest or instance IP; v4 or v6)."""
        canonical = canonical_ip(address)
        with self._lock:
            holders = self._claims.get(canonical) if canonical else None
            if not holders:
                return ()
            return holders[next(reversed(holders))].entries

    def by_namespace_ip(self, address: str) -> TableEntry | None:
        canonical = canonical_ip(address)
        with self._lock:
            return self._by_namespace_ip.get(canonical) if canonical else None

    def by_job(self, job_name: str) -> tuple[TableEntry, ...]:
        """The job's entries, ordered by instance number."""
        with self._lock:
            return self._jobs.get(job_name, ())

    def jobs(self) -> set[str]:
        with self._lock:
            return set(self._jobs)

    def entries(self) -> list[TableEntry]:
        """Every entry, ordered by job name and instance number."""
        with self._lock:
            return [entry for job in sorted(self._jobs) for entry in self._jobs[job]]

    def to_status(self) -> list[dict[str, Any]]:
        return [entry.to_status() for entry in self.entries()]

    def service_view(self) -> list[ServiceView]:
        """Each service address once, v4 and v6 paired when they lead to the same entries."""
        with self._lock:
            version, view = self._view
            if version != self._version:
                view = self._build_view()
                self._view = (self._version, view)
            return list(view)

    def dataplane_services(self) -> list[ServiceEntry]:
        """service_view() as the data plane consumes it: one ServiceEntry per service
        address (pair), valid by construction, so the data plane takes it as it is."""
        with self._lock:
            version, services = self._services
            if version != self._version:
                services = [
                    ServiceEntry(
                        view.service_ip,
                        view.service_ip_v6,
                        view.ip_type,
                        tuple(entry.to_endpoint() for entry in view.entries),
                    )
                    for view in self.service_view()
                ]
                self._services = (self._version, services)
            return list(services)

    # ------------------------------------------------------------------ internals

    def _evict_namespace_ips(self, job_name: str, entries: tuple[TableEntry, ...]) -> None:
        """Remove the entries of other jobs holding a namespace IP of `entries`."""
        doomed: dict[str, set[TableEntry]] = {}
        for entry in entries:
            for address in entry.namespace_ips:
                holder = self._by_namespace_ip.get(address)
                if holder is not None and holder.job_name != job_name:
                    doomed.setdefault(holder.job_name, set()).add(holder)
        for other, gone in doomed.items():
            remaining = tuple(e for e in self._jobs[other] if e not in gone)
            self._set_job(other, remaining, newest=False)

    def _set_job(self, job_name: str, entries: tuple[TableEntry, ...], *, newest: bool) -> None:
        """Re-index one job; `newest` makes it the owner of every service address it claims."""
        for entry in self._jobs.get(job_name, ()):
            for address in entry.namespace_ips:
                if self._by_namespace_ip.get(address) is entry:
                    del self._by_namespace_ip[address]
        old_claims = self._job_claims.pop(job_name, {})
        new_claims = _claims_of(entries)
        for address in old_claims.keys() - new_claims.keys():
            holders = self._claims[address]
            del holders[job_name]
            if not holders:
                del self._claims[address]
        for address, claim in new_claims.items():
            holders = self._claims.setdefault(address, {})
            if newest:
                holders.pop(job_name, None)
            holders[job_name] = claim  # an existing key keeps its place in the order
        for entry in entries:
            for address in entry.namespace_ips:
                self._by_namespace_ip[address] = entry
        if entries:
            self._jobs[job_name] = entries
            self._job_claims[job_name] = new_claims
        else:
            self._jobs.pop(job_name, None)

    def _owner(self, address: str) -> tuple[str, _Claim]:
        holders = self._claims[address]
        job_name = next(reversed(holders))
        return job_name, holders[job_name]

    def _build_view(self) -> list[ServiceView]:
        view: list[ServiceView] = []
        done: set[str] = set()
        for address in sorted(self._claims, key=_address_order):
            if address in done:
                continue
            job_name, claim = self._owner(address)
            partner = claim.partner if self._pairs(address, job_name, claim) else ""
            done.update((address, partner))
            v4, v6 = (address, partner) if ":" not in address else (partner, address)
            view.append(ServiceView(v4, v6, claim.ip_type, job_name, claim.entries))
        return view

    def _pairs(self, address: str, job_name: str, claim: _Claim) -> bool:
        """True if `address` and its partner can be reported as one service IP pair."""
        if not claim.partner or claim.partner not in self._claims:
            return False
        partner_job, partner_claim = self._owner(claim.partner)
        return (
            partner_job == job_name
            and partner_claim.partner == address
            and partner_claim.ip_type == claim.ip_type
            and partner_claim.entries == claim.entries
        )


def _address_order(address: str) -> tuple[int, int]:
    parsed = ip_address(address)
    return parsed.version, int(parsed)


def _service_addresses(sip: ServiceIp) -> Iterator[str]:
    return (address for address in (sip.address, sip.address_v6) if address)


def _normalize(entries: tuple[TableEntry, ...]) -> tuple[TableEntry, ...]:
    """One job's entries by the rules of the module docstring, ordered by instance number."""
    chosen: dict[int, TableEntry] = {}
    holder: dict[str, int] = {}  # namespace IP -> instance number holding it
    for entry in entries:
        doomed = {entry.instance_number} | {
            holder[address] for address in entry.namespace_ips if address in holder
        }
        for number in doomed & chosen.keys():
            for address in chosen.pop(number).namespace_ips:
                del holder[address]
        chosen[entry.instance_number] = entry
        holder.update(dict.fromkeys(entry.namespace_ips, entry.instance_number))
    kinds: dict[str, str] = {}  # service address -> its IpType kind in this job
    normalized = []
    for number in sorted(chosen):
        entry = chosen[number]
        kept: list[ServiceIp] = []
        for sip in entry.service_ips:
            if sip not in kept and _keep(sip, kinds):
                kept.append(sip)
        if kept:
            same = len(kept) == len(entry.service_ips)
            normalized.append(
                entry if same else dataclasses.replace(entry, service_ips=tuple(kept))
            )
    return tuple(normalized)


def _keep(sip: ServiceIp, kinds: dict[str, str]) -> bool:
    """Whether a service IP of an entry stays; records the addresses it claims in `kinds`.

    Instance addresses are recorded as "taken" so no second listing (even in the same
    entry) is kept; other kinds only have to agree with the kind seen first.
    """
    kind = ip_kind(sip.ip_type)
    for address in _service_addresses(sip):
        seen = kinds.get(address)
        if seen is not None and (seen != kind or kind == INSTANCE_IP):
            return False
    for address in _service_addresses(sip):
        kinds[address] = kind
    return True


def _claims_of(entries: tuple[TableEntry, ...]) -> dict[str, _Claim]:
    """Service address -> how these entries (one job, normalized) list it."""
    first: dict[str, tuple[str, str]] = {}  # address -> (kind, partner) of its first listing
    listed: dict[str, list[TableEntry]] = {}
    for entry in entries:
        for sip in entry.service_ips:
            pairs = ((sip.address, sip.address_v6), (sip.address_v6, sip.address))
            for address, partner in pairs:
                if not address:
                    continue
                first.setdefault(address, (ip_kind(sip.ip_type), partner))
                holders = listed.setdefault(address, [])
                if not holders or holders[-1] is not entry:
                    holders.append(entry)
    return {
        address: _Claim(first[address][0], first[address][1], tuple(holders))
        for address, holders in listed.items()
    }
