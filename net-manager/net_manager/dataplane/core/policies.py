"""Balancing policies: which endpoint a new flow to a service IP goes to.

A policy is asked only for new flows, through pick(flow_key, endpoints) -> endpoint;
stickiness and re-picking when an endpoint leaves are the flow table's and the
translator's business. The table names a service IP's policy by its IpType ("RR",
"Closest", "instance_ip", upstream's "InstanceNumber"); policy_name() maps it to one of
ROUND_ROBIN, CLOSEST, INSTANCE_IP. No I/O; RTTs are measured by the packet loop.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from typing import Protocol, TypeVar

from net_manager.dataplane.core.flows import FlowKey
from oakestra_net.services import IP_TYPES

_NAMES = IP_TYPES


def policy_name(ip_type: str) -> str:
    """The policy for a service IP of this IpType; ValueError if there is none."""
    try:
        return _NAMES[ip_type]
    except KeyError:
        raise ValueError(f"no balancing policy for IpType {ip_type!r}") from None


class Located(Protocol):
    @property
    def node_ip(self) -> str: ...


E = TypeVar("E", bound=Located)


class Policy(Protocol):
    def pick(self, flow_key: FlowKey, endpoints: Sequence[E]) -> E: ...


class RoundRobin:
    """True rotation over the endpoints, one rotation per service IP (flow_key[3])."""

    def __init__(self) -> None:
        self._next: dict[bytes, int] = {}

    def pick(self, flow_key: FlowKey, endpoints: Sequence[E]) -> E:
        if not endpoints:
            raise ValueError(f"no endpoint to pick for service IP {flow_key[3].hex()}")
        service_ip = flow_key[3]
        n = self._next.get(service_ip, 0) % len(endpoints)
        self._next[service_ip] = n + 1
        return endpoints[n]

    def retain(self, service_ips: Container[bytes]) -> None:
        """Forget the rotation of service IPs no longer in the table."""
        for service_ip in [s for s in self._next if s not in service_ips]:
            del self._next[service_ip]


class Closest:
    """An endpoint on this node, else on the peer with the lowest RTT, else round robin.

    rtt maps a peer's node_ip to its measured tunnel round-trip time in seconds; the
    loop updates it in place. Ties rotate (round robin over the tied endpoints).
    """

    def __init__(self, node_ip: str, rtt: Mapping[str, float]) -> None:
        self.node_ip = node_ip
        self.rtt = rtt
        self._rotation = RoundRobin()

    def pick(self, flow_key: FlowKey, endpoints: Sequence[E]) -> E:
        local = [e for e in endpoints if e.node_ip == self.node_ip]
        if local:
            return self._rotation.pick(flow_key, local)
        rtt = self.rtt
        measured = [e for e in endpoints if e.node_ip in rtt]
        if measured:
            best = min(rtt[e.node_ip] for e in measured)
            return self._rotation.pick(flow_key, [e for e in measured if rtt[e.node_ip] == best])
        return self._rotation.pick(flow_key, endpoints)

    def retain(self, service_ips: Container[bytes]) -> None:
        self._rotation.retain(service_ips)


class InstanceIp:
    """An instance IP maps to exactly one instance."""

    def pick(self, flow_key: FlowKey, endpoints: Sequence[E]) -> E:
        if not endpoints:
            raise ValueError(f"no endpoint to pick for instance IP {flow_key[3].hex()}")
        return endpoints[0]
