"""Which service IPs the kernel serves, and the nftables ruleset doing it (pure, no I/O).

`plan()` reads the same table the TUN proxy gets (services, local instances, node IP)
and keeps the service IPs the kernel can serve with the proxy's semantics:

- RoundRobin: every instance of that family is on this node's bridge; `numgen inc`
  picks one per new connection (one counter per service IP);
- Closest: the instances on this node (rotating like RoundRobin, as the proxy does);
- instance IP: its one instance, on this node;

and only for callers that are local instances with an instance IP of that family. A
service IP with an instance elsewhere, and every caller the table does not know, stays
with the TUN proxy: no rule matches, the route to the TUN decides.

`KernelPlan.render()` is one `nft -f` transaction that replaces our own table
`inet oakestra_net` as a whole (create, delete, define), never touching another table:

- `prerouting` (nat, before the iptables nat chains): packets a local instance sends
  through the bridge to a served service IP are DNATed to an instance's namespace IP.
  It runs before routing, so the new destination takes the bridge route instead of the
  route to the TUN;
- `postrouting` (nat, before the iptables nat chains): connections we DNATed get the
  caller's instance IP as source, so the server sees the caller's instance IP and,
  through conntrack, the caller sees replies from the service IP;
- `used` (filter, after the DNAT): every packet of a connection to a served service IP
  (either direction, so established flows count) refreshes that service IP in a set
  with a timeout, which the backend reads to report used services.

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
from oakestra_net.services import CLOSEST, INSTANCE_IP, ROUND_ROBIN

TABLE = "oakestra_net"
FAMILY = "inet"
USED_TIMEOUT_SECONDS = 2  # a service counts as used this long after its last packet
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
            lines += [
                f"  set used_v{version} {{",
                f"    type {kind}; flags dynamic,timeout; timeout {USED_TIMEOUT_SECONDS}s;",
                "  }",
            ]
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
        lines += ["  }", "  chain used {"]
        lines.append("    type filter hook prerouting priority dstnat + 10; policy accept;")
        for version in _VERSIONS:
            ip = _NFT_FAMILY[version]
            lines.append(
                f"    ct original {ip} daddr @services_v{version}"
                f" update @used_v{version} {{ ct original {ip} daddr }}"
            )
        lines += ["  }", "}"]
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
) -> KernelPlan:
    """The service IPs the kernel can serve (see the module doc); never raises on a bad
    entry: what cannot be served is listed in `skipped` and stays with the TUN proxy.
    ValueError only for a bridge name that is no interface name."""
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
            choice = _choose(entry, version, local_ips)
            if isinstance(choice, str):
                skipped[service_ip] = choice
                continue
            policy, targets = choice
            jobs = tuple(sorted({e.job_name for e in entry.endpoints}))
            served.append(KernelService(version, service_ip, policy, targets, jobs))
    return KernelPlan(bridge, callers, tuple(sorted(served)), skipped)


def _choose(
    entry: ServiceEntry, version: int, local_ips: set[str]
) -> tuple[str, tuple[str, ...]] | str:
    """(policy, namespace IP targets) for one service IP, or why the TUN keeps it."""
    try:
        policy = policy_name(entry.ip_type)
    except ValueError as err:
        return str(err)
    usable = [a[version][0] for e in entry.endpoints if version in (a := _addresses(e))]
    if not usable:
        return "no instance of this family"
    local = tuple(ip for ip in usable if ip in local_ips)
    if policy == ROUND_ROBIN and len(local) < len(usable):
        return "an instance on another node"
    if policy == CLOSEST and not local:
        return "no instance on this node"
    if policy == INSTANCE_IP and (len(usable) != 1 or not local):
        return "instance IP of an instance on another node"
    return policy, local


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
