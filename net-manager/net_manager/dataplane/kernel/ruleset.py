"""Which service IPs the kernel serves, and the nftables ruleset doing it (pure, no I/O).

`plan()` reads the same table the TUN proxy gets (services, local instances, node IP)
and keeps the service IPs the kernel can serve with the proxy's semantics:

- RoundRobin: every instance of that family is on this node's bridge or on a kernel
  peer (`kernel_peers`: our nodes that run the kernel tunnel and admit ours); `numgen
  inc` picks one per new connection (one counter per service IP);
- Closest: the instances on this node (rotating like RoundRobin, as the proxy does);
  with none here, those on the peer with the lowest RTT (`rtt`, the proxy's probes;
  ties rotate), with no RTT known all of them, as the proxy picks; served when the
  chosen instances are all here or on kernel peers;
- instance IP: its one instance, on this node or on a kernel peer;

and only for callers that are local instances with an instance IP of that family. A
service IP with an instance on a node without the kernel tunnel (an upstream node, a
node in `tun` mode, a peer not verified yet), and every caller the table does not know,
stays with the TUN proxy as a whole: no rule matches, the route to the TUN decides.
The DNAT to a remote instance's namespace IP takes the route to its node's subnet over
the VXLAN device (`node/tunnel.py`).

`KernelPlan.render()` is one `nft -f` transaction that replaces our own table
`inet oakestra_net` as a whole (create, delete, define), never touching another table:

- `prerouting` (nat, before the iptables nat chains): packets a local instance sends
  through the bridge to a served service IP are DNATed to an instance's namespace IP.
  It runs before routing, so the new destination takes the bridge route instead of the
  route to the TUN;
- `postrouting` (nat, before the iptables nat chains): connections we DNATed get the
  caller's instance IP as source, so the server sees the caller's instance IP and,
  through conntrack, the caller sees replies from the service IP;

No rule walks every packet to learn which services are used: the backend reads that
from conntrack's packet counts (`flows.py`).

With a kernel tunnel (`tunnel`), four more chains guard and route it:

- `tunnel_in` (filter input): UDP to the VXLAN port only from our peers' node IPs
  (`tunnel_peers_v4`), none over IPv6; nothing arriving on the device is for the node;
- `tunnel_mark` (filter prerouting, mangle priority): a new connection arriving on the
  device gets the sending peer's mark as its conntrack mark (a map from the inner source
  MAC, which each node derives from its node IP); a reply of a local instance to such a
  connection gets that mark as packet mark, so the peer's fwmark rule routes it back
  over the device (its destination, the caller's instance IP, says nothing about the
  caller's node);
- `tunnel_forward` (filter forward, jumping to `from_tunnel` / `to_tunnel` only for
  packets of the device): from the device only replies, or new connections from a peer
  (marked) with an instance IP as source to a namespace IP here; to the device only our
  DNATed connections and replies of marked ones. A container sending straight to a
  remote namespace IP is dropped, as the TUN drops it (`not_service`);
- `tunnel_out` (filter output): the node's own packets never leave through the device.

Connections that existed before a rule (e.g. the table miss that went to the TUN) keep
conntrack's earlier decision: they stay on the TUN until they end.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

from net_manager.dataplane.core.policies import policy_name
from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.node.names import BRIDGE
from net_manager.node.tunnel import TunnelPeer, TunnelSpec, sorted_subnets, subnet_of
from oakestra_net.addressing import SERVICE_V4, SERVICE_V6
from oakestra_net.services import CLOSEST, INSTANCE_IP

TABLE = "oakestra_net"
FAMILY = "inet"
_VERSIONS = (4, 6)
_INTERFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_NFT_FAMILY = {4: "ip", 6: "ip6"}
_NFT_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}


@dataclass(frozen=True, order=True)
class KernelService:
    """One service IP the kernel serves: its namespace IP targets (in rotation order)."""

    version: int
    service_ip: str
    policy: str
    targets: tuple[str, ...]
    job_names: tuple[str, ...]


@dataclass(frozen=True)
class KernelPlan:
    """What the kernel serves for one version of the table, and the rules doing it."""

    bridge: str
    callers: Mapping[int, Mapping[str, str]]  # version -> namespace IP -> instance IP
    services: tuple[KernelService, ...] = ()
    skipped: Mapping[str, str] = field(default_factory=dict)  # service IP -> why (TUN)
    tunnel: TunnelSpec | None = None  # the kernel tunnel's guard and return-path chains

    def service_ips(self) -> set[str]:
        return {s.service_ip for s in self.services}

    def jobs_of(self, service_ip: str) -> tuple[str, ...]:
        """The job names behind a served service IP (for interest bookkeeping)."""
        for service in self.services:
            if service.service_ip == service_ip:
                return service.job_names
        return ()

    def render(self) -> str:
        """The nft script replacing our table with this plan, as one transaction."""
        return "\n".join([*_delete_lines(), *self._table_lines()]) + "\n"

    def _table_lines(self) -> list[str]:
        lines = [f"table {FAMILY} {TABLE} {{"]
        served = {v: [s for s in self.services if s.version == v] for v in _VERSIONS}
        for version in _VERSIONS:
            kind = _NFT_TYPE[version]
            callers = self.callers.get(version, {})
            lines += _set(f"callers_v{version}", kind, sorted(callers, key=_sort_key))
            pairs = [f"{ns} : {callers[ns]}" for ns in sorted(callers, key=_sort_key)]
            lines += _set(f"instance_ip_v{version}", f"{kind} : {kind}", pairs, word="map")
            lines += _set(f"services_v{version}", kind, [s.service_ip for s in served[version]])
        for version in _VERSIONS:
            for index, service in enumerate(served[version]):
                lines += [
                    f"  chain {_chain(version, index)} {{",
                    f"    counter {_dnat(service)}",
                    "  }",
                ]
        lines += [
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat - 10; policy accept;",
            f'    iifname != "{self.bridge}" return',
        ]
        for version in _VERSIONS:
            ip = _NFT_FAMILY[version]
            if served[version] and self.callers.get(version):
                vmap = ", ".join(
                    f"{s.service_ip} : goto {_chain(version, i)}"
                    for i, s in enumerate(served[version])
                )
                lines.append(f"    {ip} saddr @callers_v{version} {ip} daddr vmap {{ {vmap} }}")
        lines += ["  }", "  chain postrouting {"]
        lines.append("    type nat hook postrouting priority srcnat - 10; policy accept;")
        for version in _VERSIONS:
            ip = _NFT_FAMILY[version]
            lines.append(
                f"    ct status dnat ct original {ip} daddr @services_v{version}"
                f" snat {ip} to {ip} saddr map @instance_ip_v{version}"
            )
        lines += ["  }"]
        if self.tunnel is not None:
            lines += _tunnel_lines(self.tunnel, self.bridge)
        lines += ["}"]
        return lines


def _tunnel_lines(tunnel: TunnelSpec, bridge: str) -> list[str]:
    device, port = tunnel.device, tunnel.port
    peers = sorted(tunnel.peers)
    lines = _set("tunnel_peers_v4", "ipv4_addr", [p.node_ip for p in peers])
    lines += _set("tunnel_marks", "mark", [f"{p.mark:#010x}" for p in peers])
    pairs = [f"{p.mac} : {p.mark:#010x}" for p in peers]
    lines += _set("peer_marks", "ether_addr : mark", pairs, word="map")
    lines += [
        "  chain tunnel_in {",
        "    type filter hook input priority filter - 10; policy accept;",
        f"    udp dport {port} ip saddr != @tunnel_peers_v4 counter drop",
        f"    meta nfproto ipv6 udp dport {port} counter drop",
        f'    iifname "{device}" counter drop',
        "  }",
        "  chain tunnel_mark {",
        "    type filter hook prerouting priority mangle; policy accept;",
        f'    iifname "{device}" ct state new ct mark set ether saddr map @peer_marks',
        f'    iifname "{bridge}" ct direction reply ct mark @tunnel_marks meta mark set ct mark',
        "  }",
        # Two interface tests per forwarded packet; the checks run only for the device.
        "  chain tunnel_forward {",
        "    type filter hook forward priority filter - 10; policy accept;",
        f'    iifname "{device}" jump from_tunnel',
        f'    oifname "{device}" jump to_tunnel',
        "  }",
        "  chain from_tunnel {",
        "    ct direction reply accept",
        f'    oifname != "{bridge}" counter drop',
        "    ct mark != @tunnel_marks counter drop",
        f"    ip saddr != {SERVICE_V4} counter drop",
        f"    ip6 saddr != {SERVICE_V6} counter drop",
        "  }",
        "  chain to_tunnel {",
        "    ct direction original ct status dnat ct original ip daddr @services_v4 accept",
        "    ct direction original ct status dnat ct original ip6 daddr @services_v6 accept",
        "    ct direction reply ct mark @tunnel_marks accept",
        "    counter drop",
        "  }",
        "  chain tunnel_out {",
        "    type filter hook output priority filter - 10; policy accept;",
        f'    oifname "{device}" counter drop',
        "  }",
    ]
    return lines


def render_delete() -> str:
    """The nft script removing our table (and nothing else); fine if it is absent."""
    return "\n".join(_delete_lines()) + "\n"


def _delete_lines() -> list[str]:
    # `table` creates it when absent, so the delete never fails; one transaction.
    return [f"table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}"]


def _set(name: str, kind: str, elements: list[str], *, word: str = "set") -> list[str]:
    body = f"type {kind};"
    if elements:
        body += f" elements = {{ {', '.join(elements)} }};"
    return [f"  {word} {name} {{ {body} }}"]


def _chain(version: int, index: int) -> str:
    return f"service_v{version}_{index}"


def _dnat(service: KernelService) -> str:
    ip = _NFT_FAMILY[service.version]
    if len(service.targets) == 1:
        return f"dnat {ip} to {service.targets[0]}"
    choices = ", ".join(f"{i} : {t}" for i, t in enumerate(service.targets))
    return f"dnat {ip} to numgen inc mod {len(service.targets)} map {{ {choices} }}"


def _sort_key(text: str) -> tuple[int, int]:
    address = ip_address(text)
    return address.version, int(address)


def departed(old: KernelPlan, services: Iterable[ServiceEntry]) -> list[tuple[int, str, str]]:
    """(version, service IP, namespace IP) of kernel targets of `old` that no endpoint of
    the new table has any more: the instance left, so its connections must be forgotten
    (their next packet then picks again, as with the TUN proxy)."""
    still_there: set[str] = set()
    for entry in services:
        for endpoint in entry.endpoints:
            still_there.update(ns for ns, _ in _addresses(endpoint).values())
    return [
        (service.version, service.service_ip, target)
        for service in old.services
        for target in service.targets
        if target not in still_there
    ]


# ---------------------------------------------------------------- the plan


def plan(
    services: Iterable[ServiceEntry],
    local_instances: Iterable[Endpoint],
    node_ip: str,
    *,
    bridge: str,
    kernel_peers: Iterable[str] = (),
    rtt: Mapping[str, float] | None = None,
    tunnel: TunnelSpec | None = None,
) -> KernelPlan:
    """The service IPs the kernel can serve (see the module doc); never raises on a bad
    entry: what cannot be served is listed in `skipped` and stays with the TUN proxy.
    `kernel_peers` are only used with a `tunnel`. ValueError only for a bridge name that
    is no interface name."""
    if not _INTERFACE.fullmatch(bridge):
        raise ValueError(f"bridge {bridge!r} is not an interface name")
    callers: dict[int, dict[str, str]] = {4: {}, 6: {}}
    local_ips: set[str] = set()
    for endpoint in local_instances:
        for version, (namespace_ip, instance_ip) in _addresses(endpoint).items():
            local_ips.add(namespace_ip)
            if instance_ip:
                callers[version][namespace_ip] = instance_ip
    served: list[KernelService] = []
    skipped: dict[str, str] = {}
    seen: set[str] = set()
    where = _Where(node_ip, local_ips, set(kernel_peers) if tunnel else set(), rtt or {})
    for entry in services:
        for version, text in ((4, entry.service_ip), (6, entry.service_ip_v6)):
            if not text:
                continue
            service_ip = _canonical(text, version)
            if service_ip is None:
                skipped[text] = f"not an IPv{version} address"
                continue
            if service_ip in seen:
                skipped[service_ip] = "listed twice"
                continue
            seen.add(service_ip)
            choice = _choose(entry, version, where)
            if isinstance(choice, str):
                skipped[service_ip] = choice
                continue
            policy, targets = choice
            jobs = tuple(sorted({e.job_name for e in entry.endpoints}))
            served.append(KernelService(version, service_ip, policy, targets, jobs))
    return KernelPlan(bridge, callers, tuple(sorted(served)), skipped, tunnel)


@dataclass(frozen=True)
class _Where:
    """Where instances are, as far as the plan cares."""

    node_ip: str
    local_ips: set[str]  # namespace IPs of this node's instances
    kernel_peers: set[str]  # node IPs of peers the kernel tunnel reaches
    rtt: Mapping[str, float]

    def reachable(self, namespace_ip: str, endpoint: Endpoint) -> bool:
        return namespace_ip in self.local_ips or endpoint.node_ip in self.kernel_peers


def _choose(entry: ServiceEntry, version: int, where: _Where) -> tuple[str, tuple[str, ...]] | str:
    """(policy, namespace IP targets) for one service IP, or why the TUN keeps it."""
    try:
        policy = policy_name(entry.ip_type)
    except ValueError as err:
        return str(err)
    usable = [(a[version][0], e) for e in entry.endpoints if version in (a := _addresses(e))]
    if not usable:
        return "no instance of this family"
    local = [(ip, e) for ip, e in usable if ip in where.local_ips]
    if policy == CLOSEST:
        chosen = local or _closest(usable, where.rtt)
    elif policy == INSTANCE_IP and len(usable) != 1:
        return "instance IP with more than one instance"
    else:
        chosen = usable
    if not all(where.reachable(ip, e) for ip, e in chosen):
        if policy == CLOSEST:
            return "closest instance on a node without the kernel tunnel"
        if policy == INSTANCE_IP:
            return "instance on a node without the kernel tunnel"
        return "an instance on a node without the kernel tunnel"
    return policy, tuple(ip for ip, _ in chosen)


def _closest(
    usable: list[tuple[str, Endpoint]], rtt: Mapping[str, float]
) -> list[tuple[str, Endpoint]]:
    """The instances the proxy's Closest picks among (no local one): those on the peer
    with the lowest RTT, else (no RTT known) all of them."""
    measured = [(ip, e) for ip, e in usable if e.node_ip in rtt]
    if not measured:
        return usable
    best = min(rtt[e.node_ip] for _, e in measured)
    return [(ip, e) for ip, e in measured if rtt[e.node_ip] == best]


def tunnel_spec(
    services: Iterable[ServiceEntry],
    peers: Iterable[str],
    node_ip: str,
    *,
    port: int,
    mtu: int,
    bridge: str = BRIDGE,
) -> TunnelSpec:
    """The kernel tunnel to `peers` (node IPs of our nodes in kernel mode), with the
    subnets of every peer's instances in the table (to route our calls to them)."""
    subnets: dict[str, set[str]] = {peer: set() for peer in peers if peer != node_ip}
    for entry in services:
        for endpoint in entry.endpoints:
            if endpoint.node_ip not in subnets:
                continue
            for namespace_ip, _ in _addresses(endpoint).values():
                if (subnet := subnet_of(namespace_ip)) is not None:
                    subnets[endpoint.node_ip].add(subnet)
    members = tuple(TunnelPeer(peer, sorted_subnets(found)) for peer, found in subnets.items())
    return TunnelSpec(node_ip, port, mtu, tuple(sorted(members)), bridge=bridge)


def _addresses(endpoint: Endpoint) -> dict[int, tuple[str, str]]:
    """version -> (namespace IP, instance IP or "") of an endpoint, canonical; a family
    without a valid namespace IP is absent."""
    found = {}
    pairs = {
        4: (endpoint.namespace_ip, endpoint.instance_ip),
        6: (endpoint.namespace_ip_v6, endpoint.instance_ip_v6),
    }
    for version, (namespace_text, instance_text) in pairs.items():
        namespace_ip = _canonical(namespace_text, version)
        if namespace_ip is not None:
            found[version] = (namespace_ip, _canonical(instance_text, version) or "")
    return found


def _canonical(text: str, version: int) -> str | None:
    """The canonical text of an address of that family, else None (never raises)."""
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if address.version != version:
        return None
    kind = IPv4Address if version == 4 else IPv6Address
    return str(kind(address)) if not address.is_unspecified else None
