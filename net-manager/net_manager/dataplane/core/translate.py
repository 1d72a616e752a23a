"""Service-IP translation of packets, in place: the pure core of the node's proxy.

build_snapshot() turns the translation table (service entries and the local instances)
into an immutable Snapshot keyed by packed addresses. A Translator holds the current
snapshot, the flow table and the balancing policies, and rewrites packets:

- outgoing(buf, n): a packet a local container sent to a service IP. Its source
  becomes the sender's instance IP, its destination the namespace IP of the endpoint
  the flow goes to; the verdict says where it goes (LOCAL: this node's TUN, already
  reverse-translated and counted as incoming too; REMOTE: the address of the peer's
  tunnel), or MISS (packet untouched: resolve the service IP, then call again), or DROP
  with a reason. Fragments after the first follow the first one's flow.
- from_tunnel(buf, n, sender): a packet a peer node sent through the tunnel, from the
  underlay address sender. Admitted only if it is addressed to a local namespace IP and
  its source is an instance IP the table places on that sender node (the only source
  our nodes and upstream nodes ever put on the wire); a source that may be an instance
  IP not resolved yet is a MISS on that IP (the loop queues the packet and resolves it,
  as it would to route the reply), anything else a counted DROP. Then as incoming().
- incoming(buf, n): a packet for one of this node's namespace IPs, already admitted.
  A reply to a translated flow gets back, as its source, the service IP the client
  used; anything else is delivered unchanged.

Each local instance may hold at most flow_quota flows, so one container cannot fill
the table for the others. A later fragment whose first one is waiting for its service
IP to be resolved is a MISS on that IP too (queued with it, so the datagram arrives
whole). Only addresses change, so checksums are fixed incrementally with a per-flow delta.
Reading and writing the TUN and the tunnel, resolving misses and reporting used jobs
(used_jobs) are the packet loop's job. Not thread-safe: call everything, set_snapshot()
included, from the loop's thread.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network, ip_address
from types import MappingProxyType

from net_manager.dataplane.core.flows import FlowKey, FlowTable, FragmentMap
from net_manager.dataplane.core.packet import (
    MALFORMED,
    UNSUPPORTED_ICMP,
    UNSUPPORTED_PROTOCOL,
    UNSUPPORTED_ROUTING,
    Header,
    address_delta,
    adjust,
    parse,
)
from net_manager.dataplane.core.policies import (
    Closest,
    InstanceIp,
    Policy,
    RoundRobin,
    policy_name,
)
from oakestra_net.addressing import SERVICE_V4, SERVICE_V6
from oakestra_net.services import CLOSEST, INSTANCE_IP, ROUND_ROBIN

NOT_SERVICE = "not_service"  # outgoing to an address that is no service IP
UNKNOWN_SENDER = "unknown_sender"  # outgoing from an address that is no local instance
NO_ENDPOINTS = "no_endpoints"  # the service IP resolved to no instance (of this family)
FLOW_TABLE_FULL = "flow_table_full"
FRAGMENT_UNKNOWN = "fragment_unknown"  # a later fragment whose first one was not seen
NOT_FOR_US = "not_for_us"  # incoming to an address that is no local namespace IP
FLOW_QUOTA = "flow_quota"  # the sending instance holds its quota of flows
NOT_MEMBER = "not_member"  # tunnel datagram from an address that is no known node
SPOOFED_SOURCE = "spoofed_source"  # from a node, with a source that node may not use
DROP_REASONS = (
    MALFORMED,
    UNSUPPORTED_PROTOCOL,
    UNSUPPORTED_ICMP,
    UNSUPPORTED_ROUTING,
    NOT_SERVICE,
    UNKNOWN_SENDER,
    NO_ENDPOINTS,
    FLOW_TABLE_FULL,
    FRAGMENT_UNKNOWN,
    NOT_FOR_US,
    FLOW_QUOTA,
    NOT_MEMBER,
    SPOOFED_SOURCE,
)


# ---------------------------------------------------------------- verdicts


class Action(enum.Enum):
    DROP = "drop"
    MISS = "miss"
    LOCAL = "local"
    REMOTE = "remote"
    DELIVER = "deliver"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with the packet; shared instances, compare action (or LOCAL/DELIVER)."""

    action: Action
    reason: str = ""  # DROP: why (the counter is "drop_<reason>")
    service_ip: str = ""  # MISS: the service IP to resolve
    owner: str = ""  # MISS: who caused it (a local instance; from the tunnel: the sender)
    address: tuple[str, int] | None = None  # REMOTE: (node_ip, node_port) of the peer


LOCAL = Verdict(Action.LOCAL)
DELIVER = Verdict(Action.DELIVER)
_DROPS = {reason: Verdict(Action.DROP, reason=reason) for reason in DROP_REASONS}


# ---------------------------------------------------------------- the table snapshot


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service, where it lives (an empty address: family not served)."""

    job_name: str
    instance_number: int
    namespace_ip: str
    namespace_ip_v6: str
    instance_ip: str
    instance_ip_v6: str
    node_ip: str
    node_port: int


@dataclass(frozen=True)
class ServiceEntry:
    """A service IP pair (RR, Closest or instance IP) and the instances behind it."""

    service_ip: str
    service_ip_v6: str
    ip_type: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class Target:
    """An endpoint as one address family sees it, with where its packets go."""

    endpoint: Endpoint
    namespace_ip: bytes
    instance_ip: bytes
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class Route:
    """One service IP (packed), its policy and the endpoints of its family."""

    service_ip: bytes
    policy: str
    endpoints: tuple[Endpoint, ...]
    targets: Mapping[Endpoint, Target]


@dataclass(frozen=True, slots=True)
class Snapshot:
    node_ip: str
    routes: Mapping[bytes, Route]  # service IP -> route, both families
    instance_ips: Mapping[bytes, bytes]  # local namespace IP -> instance IP, same family
    local_ips: frozenset[bytes]  # every local namespace IP
    owners: Mapping[bytes, str]  # local namespace IP (both families) -> "job.instance"
    # Tunnel admission: a node's underlay address (as recvfrom reports it, IPv4 also in
    # its ::ffff: form) -> the instance IPs of the instances the table places there,
    # each with its job name.
    members: Mapping[str, Mapping[bytes, str]]


_FAMILY_FIELDS = {4: ("namespace_ip", "instance_ip"), 6: ("namespace_ip_v6", "instance_ip_v6")}
_SERVICE_NETS: dict[int, IPv4Network | IPv6Network] = {4: SERVICE_V4, 6: SERVICE_V6}
# (network, mask) as integers: the miss path checks packed addresses without parsing them.
_SERVICE_MASKS = {
    version: (int(net.network_address), int(net.netmask)) for version, net in _SERVICE_NETS.items()
}


def build_snapshot(
    services: Iterable[ServiceEntry], local_instances: Iterable[Endpoint], node_ip: str
) -> Snapshot:
    """The immutable lookup structure for one version of the table; ValueError if invalid."""
    node_ip = _canonical(node_ip, f"node IP {node_ip!r}")
    targets: dict[tuple[Endpoint, int], Target | None] = {}
    routes: dict[bytes, Route] = {}
    for entry in services:
        policy = policy_name(entry.ip_type)
        for version, text in ((4, entry.service_ip), (6, entry.service_ip_v6)):
            if not text:
                continue
            route = _route(entry, text, version, policy, node_ip, targets)
            if route.service_ip in routes:
                raise ValueError(f"service IP {text} is listed twice in the table")
            routes[route.service_ip] = route
    instance_ips, local_ips, owners = _local_addresses(local_instances)
    return Snapshot(
        node_ip,
        MappingProxyType(routes),
        MappingProxyType(instance_ips),
        frozenset(local_ips),
        MappingProxyType(owners),
        MappingProxyType(_members(targets.values())),
    )


def _members(targets: Iterable[Target | None]) -> dict[str, Mapping[bytes, str]]:
    sources: dict[str, dict[bytes, str]] = {}
    for target in targets:
        if target is not None:
            endpoint = target.endpoint
            sources.setdefault(endpoint.node_ip, {})[target.instance_ip] = endpoint.job_name
    members: dict[str, Mapping[bytes, str]] = {}
    for node_ip, allowed in sources.items():
        members[node_ip] = frozen = MappingProxyType(allowed)
        if ":" not in node_ip:  # a dual-stack socket reports IPv4 senders as ::ffff:a.b.c.d
            members["::ffff:" + node_ip] = frozen
    return members


def _route(
    entry: ServiceEntry,
    text: str,
    version: int,
    policy: str,
    node_ip: str,
    targets: dict[tuple[Endpoint, int], Target | None],
) -> Route:
    service_ip = _packed(text, version, f"service IP {text!r}")
    if not _is_service_ip(service_ip):
        raise ValueError(f"service IP {text} is outside {_SERVICE_NETS[version]}")
    usable: dict[Endpoint, Target] = {}
    for endpoint in entry.endpoints:
        key = (endpoint, version)
        if key not in targets:
            targets[key] = _target(endpoint, version, node_ip)
        target = targets[key]
        if target is not None:
            usable[target.endpoint] = target
    if policy == INSTANCE_IP and len(usable) > 1:
        raise ValueError(f"instance IP {text} maps to {len(usable)} instances, not one")
    return Route(service_ip, policy, tuple(usable), MappingProxyType(usable))


def _target(endpoint: Endpoint, version: int, node_ip: str) -> Target | None:
    """The endpoint seen from one family; None if it has no address of that family."""
    name = f"instance {endpoint.job_name}.{endpoint.instance_number}"
    namespace_field, instance_field = _FAMILY_FIELDS[version]
    namespace_ip = getattr(endpoint, namespace_field)
    instance_ip = getattr(endpoint, instance_field)
    if not namespace_ip or not instance_ip:
        return None
    if not 0 < endpoint.node_port < 65536:
        raise ValueError(f"{name}: node_port {endpoint.node_port!r} is not a UDP port")
    endpoint_node = _canonical(endpoint.node_ip, f"{name}: node_ip {endpoint.node_ip!r}")
    if endpoint_node != endpoint.node_ip:  # policies and rtt keys see canonical node IPs
        endpoint = replace(endpoint, node_ip=endpoint_node)
    if endpoint_node == node_ip:
        verdict = LOCAL
    else:
        verdict = Verdict(Action.REMOTE, address=(endpoint_node, endpoint.node_port))
    return Target(
        endpoint,
        _packed(namespace_ip, version, f"{name}: {namespace_field} {namespace_ip!r}"),
        _packed(instance_ip, version, f"{name}: {instance_field} {instance_ip!r}"),
        verdict,
    )


def _local_addresses(
    local_instances: Iterable[Endpoint],
) -> tuple[dict[bytes, bytes], set[bytes], dict[bytes, str]]:
    instance_ips: dict[bytes, bytes] = {}
    local_ips: set[bytes] = set()
    owners: dict[bytes, str] = {}
    for endpoint in local_instances:
        owner = f"{endpoint.job_name}.{endpoint.instance_number}"
        name = f"local instance {owner}"
        for version, (namespace_field, instance_field) in _FAMILY_FIELDS.items():
            namespace_ip = getattr(endpoint, namespace_field)
            if not namespace_ip:
                continue
            packed = _packed(namespace_ip, version, f"{name}: {namespace_field} {namespace_ip!r}")
            if packed in local_ips:
                raise ValueError(f"{name}: namespace IP {namespace_ip} is used twice")
            local_ips.add(packed)
            owners[packed] = owner
            instance_ip = getattr(endpoint, instance_field)
            if instance_ip:
                what = f"{name}: {instance_field} {instance_ip!r}"
                instance_ips[packed] = _packed(instance_ip, version, what)
    return instance_ips, local_ips, owners


def _packed(text: str, version: int, what: str) -> bytes:
    try:
        address = ip_address(text)
    except ValueError:
        raise ValueError(f"{what} is not an IP address") from None
    if address.version != version:
        raise ValueError(f"{what} is not an IPv{version} address")
    return address.packed


def _canonical(text: str, what: str) -> str:
    try:
        return str(ip_address(text))
    except ValueError:
        raise ValueError(f"{what} is not an IP address") from None


def _is_service_ip(packed: bytes) -> bool:
    network, mask = _SERVICE_MASKS[4 if len(packed) == 4 else 6]
    return int.from_bytes(packed) & mask == network


# ---------------------------------------------------------------- flows and translation


class Flow:
    """One translated flow: the rewrite of its packets and of its replies."""

    __slots__ = (
        "key",
        "reverse_key",
        "endpoint_ip",
        "last_used",
        "service_ip",
        "sender_ip",
        "target",
        "addrs",
        "delta",
        "reply_delta",
        "verdict",
        "owner",
    )

    def __init__(
        self, key: FlowKey, sender_ip: bytes, target: Target, now: float, owner: str
    ) -> None:
        proto, src, sport, service_ip, dport = key
        self.key = key
        self.owner = owner
        # Replies come from the endpoint's instance IP (its node translates them).
        self.reverse_key: FlowKey = (proto, src, sport, target.instance_ip, dport)
        self.endpoint_ip = target.namespace_ip
        self.last_used = now
        self.service_ip = service_ip
        self.sender_ip = sender_ip
        self.target = target
        self.addrs = sender_ip + target.namespace_ip  # new src + new dst
        self.delta = address_delta(src + service_ip, self.addrs)
        self.reply_delta = address_delta(target.instance_ip, service_ip)
        self.verdict = target.verdict


def _rewrite(buf: bytearray, h: Header, addrs: bytes, delta: int) -> None:
    """Write addrs over the source (and destination) address; fix the checksums."""
    offset = h.addr_off
    buf[offset : offset + len(addrs)] = addrs
    if h.version == 4:
        adjust(buf, 10, delta, False)
    if h.l4_csum >= 0:
        adjust(buf, h.l4_csum, delta, h.udp)


class Translator:
    """Translates packets in place against the current snapshot; see the module doc."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_flows: int = 65536,
        flow_quota: int | None = None,
        idle_timeout: float = 60.0,
        max_fragments: int = 1024,
        fragment_timeout: float = 5.0,
    ) -> None:
        if flow_quota is not None and flow_quota < 1:
            raise ValueError(f"flow_quota must be >= 1, got {flow_quota}")
        self._snapshot = snapshot
        self._clock = clock
        # Flows one local instance may hold; by default a quarter of the table.
        self.flow_quota = flow_quota if flow_quota is not None else max(1, max_flows // 4)
        self._flows: FlowTable[Flow] = FlowTable(
            max_flows=max_flows, idle_timeout=idle_timeout, clock=clock
        )
        self._out_fragments: FragmentMap[Flow] = FragmentMap(
            max_entries=max_fragments, timeout=fragment_timeout
        )
        self._in_fragments: FragmentMap[Flow | None] = FragmentMap(
            max_entries=max_fragments, timeout=fragment_timeout
        )
        # Peer node_ip (canonical, as in REMOTE addresses) -> tunnel RTT in s; the loop sets it.
        self.rtt: dict[str, float] = {}
        self._round_robin = RoundRobin()
        self._closest = Closest(snapshot.node_ip, self.rtt)
        self._policies: dict[str, Policy] = {
            ROUND_ROBIN: self._round_robin,
            CLOSEST: self._closest,
            INSTANCE_IP: InstanceIp(),
        }
        self.used_jobs: set[str] = set()  # jobs hit since the loop last drained it
        self._counts = dict.fromkeys(
            [
                "packets_out",
                "bytes_out",
                "packets_in",
                "bytes_in",
                "misses",
                "admission_misses",
                "flows_created",
            ]
            + [f"drop_{reason}" for reason in DROP_REASONS],
            0,
        )
        self._out = Header()
        self._in = Header()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def counters(self) -> dict[str, int]:
        """Totals since start, plus the current number of flows and of fragment entries."""
        fragments = len(self._out_fragments) + len(self._in_fragments)
        return {**self._counts, "flows": len(self._flows), "fragments": fragments}

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Swap the table; flows whose endpoint or sender left it are dropped (re-picked)."""
        self._snapshot = snapshot
        self._closest.node_ip = snapshot.node_ip
        self._round_robin.retain(snapshot.routes)
        self._closest.retain(snapshot.routes)
        self._flows.retain(lambda flow: _still_valid(flow, snapshot))

    def expire(self, now: float | None = None) -> int:
        """Forget idle flows and stale fragments; return how many flows expired."""
        now = self._clock() if now is None else now
        self._out_fragments.expire(now)
        self._in_fragments.expire(now)
        return self._flows.expire(now)

    def purge_endpoint(self, namespace_ip: str) -> int:
        """Forget the flows to an instance that left; return how many."""
        return self._flows.purge_endpoint(namespace_ip)

    def outgoing(self, buf: bytearray, length: int) -> Verdict:
        """Translate buf[:length], a packet from a local container, in place."""
        h = self._out
        reason = parse(buf, length, h)
        if reason is not None:
            return self._drop(reason)
        now = self._clock()
        flow = self._outgoing_flow(h, now) if h.l4 else self._later_fragment(h, now)
        if isinstance(flow, Verdict):
            return flow
        flow.last_used = now
        _rewrite(buf, h, flow.addrs, flow.delta)
        self.used_jobs.add(flow.target.endpoint.job_name)
        counts = self._counts
        counts["packets_out"] += 1
        counts["bytes_out"] += length
        if flow.verdict is LOCAL:
            delivered = self.incoming(buf, length)  # what the peer's incoming() would do
            if delivered is not DELIVER:
                return delivered
        return flow.verdict

    def from_tunnel(self, buf: bytearray, length: int, sender: str) -> Verdict:
        """Admit and translate buf[:length], a packet the node at sender tunnelled here."""
        h = self._in
        reason = parse(buf, length, h)
        if reason is not None:
            return self._drop(reason)
        snapshot = self._snapshot
        if h.dst not in snapshot.local_ips:
            return self._drop(NOT_FOR_US)
        allowed = snapshot.members.get(sender)
        job_name = allowed.get(h.src) if allowed is not None else None
        if job_name is None:
            return self._not_admitted(h, sender, known=allowed is not None)
        # The caller's job stays followed while it calls (its entry routes the replies).
        self.used_jobs.add(job_name)
        return self._deliver(buf, length, h)

    def incoming(self, buf: bytearray, length: int) -> Verdict:
        """Translate buf[:length], a packet for a local namespace IP, in place."""
        h = self._in
        reason = parse(buf, length, h)
        if reason is not None:
            return self._drop(reason)
        if h.dst not in self._snapshot.local_ips:
            return self._drop(NOT_FOR_US)
        return self._deliver(buf, length, h)

    def _deliver(self, buf: bytearray, length: int, h: Header) -> Verdict:
        now = self._clock()
        flow: Flow | None
        if not h.l4:
            entry = self._in_fragments.find(h.frag_key, now)
            if entry is None:
                return self._drop(FRAGMENT_UNKNOWN)
            flow = entry[0]
        else:
            flow = self._flows.get_reverse((h.proto, h.dst, h.dport, h.src, h.sport))
            if h.frag_key is not None:
                self._in_fragments.record(h.frag_key, flow, now)
        if flow is not None:  # a reply: the source becomes the service IP the client used
            flow.last_used = now
            _rewrite(buf, h, flow.service_ip, flow.reply_delta)
        counts = self._counts
        counts["packets_in"] += 1
        counts["bytes_in"] += length
        return DELIVER

    def _outgoing_flow(self, h: Header, now: float) -> Flow | Verdict:
        route = self._snapshot.routes.get(h.dst)
        if route is None:
            return self._miss(h)
        key = (h.proto, h.src, h.sport, h.dst, h.dport)
        flow = self._flows.get(key) or self._open_flow(key, route, h, now)
        if h.frag_key is not None and isinstance(flow, Flow):
            self._out_fragments.record(h.frag_key, flow, now)
        return flow

    def _later_fragment(self, h: Header, now: float) -> Flow | Verdict:
        """The flow the first fragment of this datagram went through.

        Unknown while the service IP is not resolved: the first fragment is queued for
        it, so this one is a miss on the same IP and waits with it."""
        entry = self._out_fragments.find(h.frag_key, now)
        if entry is not None:
            return entry[0]
        if h.dst not in self._snapshot.routes and _is_service_ip(h.dst):
            return self._miss(h)
        return self._drop(FRAGMENT_UNKNOWN)

    def _open_flow(self, key: FlowKey, route: Route, h: Header, now: float) -> Flow | Verdict:
        sender_ip = self._snapshot.instance_ips.get(h.src)
        if sender_ip is None:
            return self._drop(UNKNOWN_SENDER)
        if not route.endpoints:
            return self._drop(NO_ENDPOINTS)
        owner = self._snapshot.owners[h.src]
        if self._flows.owned(owner) >= self.flow_quota:
            return self._drop(FLOW_QUOTA)
        if self._flows.full:
            return self._drop(FLOW_TABLE_FULL)
        endpoint = self._policies[route.policy].pick(key, route.endpoints)
        flow = Flow(key, sender_ip, route.targets[endpoint], now, owner)
        self._flows.add(flow)
        self._counts["flows_created"] += 1
        return flow

    def _miss(self, h: Header) -> Verdict:
        if not _is_service_ip(h.dst):
            return self._drop(NOT_SERVICE)
        owner = self._snapshot.owners.get(h.src)
        if owner is None or h.src not in self._snapshot.instance_ips:
            return self._drop(UNKNOWN_SENDER)
        self._counts["misses"] += 1
        return Verdict(Action.MISS, service_ip=str(ip_address(h.dst)), owner=owner)

    def _not_admitted(self, h: Header, sender: str, *, known: bool) -> Verdict:
        """A tunnelled packet whose source the sender may not use, as far as we know.

        A source in the service range that the table does not know may be the instance
        IP of a caller on a node we never talked to: resolve it (a MISS on that IP) and
        try again. A source the table places elsewhere, or any other source, is dropped."""
        if _is_service_ip(h.src) and h.src not in self._snapshot.routes:
            self._counts["admission_misses"] += 1
            return Verdict(Action.MISS, service_ip=str(ip_address(h.src)), owner=sender)
        return self._drop(SPOOFED_SOURCE if known else NOT_MEMBER)

    def _drop(self, reason: str) -> Verdict:
        self._counts["drop_" + reason] += 1
        return _DROPS[reason]


def _still_valid(flow: Flow, snapshot: Snapshot) -> bool:
    route = snapshot.routes.get(flow.service_ip)
    return (
        route is not None
        and route.targets.get(flow.target.endpoint) == flow.target
        and snapshot.instance_ips.get(flow.key[1]) == flow.sender_ip
    )
