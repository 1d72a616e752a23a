"""Service IPs as root, cluster and node name them: their kinds and their canonical text.

A job has one round-robin and one closest service IP (each an IPv4 and an IPv6
address); each instance has its own instance IP. On the wire a service IP carries its
kind as `IpType`: "RR", "Closest" or "instance_ip"; upstream nodes also say
"InstanceNumber" for an instance IP. Addresses are compared and used as keys in one
form only, `canonical_ip` (what `ipaddress` prints: IPv6 compressed, lower case).
"""

from __future__ import annotations

import functools
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_address


class ServiceIpKind(StrEnum):
    """The kind of a service IP, as its IpType on the wire."""

    ROUND_ROBIN = "RR"
    CLOSEST = "Closest"
    INSTANCE = "instance_ip"


ROUND_ROBIN = ServiceIpKind.ROUND_ROBIN
CLOSEST = ServiceIpKind.CLOSEST
INSTANCE_IP = ServiceIpKind.INSTANCE
INSTANCE_NUMBER = "InstanceNumber"  # upstream's IpType for an instance IP
JOB_KINDS = (ROUND_ROBIN, CLOSEST)  # the kinds a job has one address of
# Every IpType accepted on the wire, and the kind it means.
IP_TYPES: dict[str, ServiceIpKind] = {
    **{kind.value: kind for kind in ServiceIpKind},
    INSTANCE_NUMBER: INSTANCE_IP,
}


def kind_of(ip_type: object) -> ServiceIpKind | None:
    """The kind an IpType names; None if it names none."""
    return IP_TYPES.get(ip_type) if isinstance(ip_type, str) else None


def canonical_ip(text: object) -> str | None:
    """`text` as a canonical IP address string; None if it is not one (or is scoped)."""
    parsed = parse_ip(text) if isinstance(text, str) else None
    return parsed[0] if parsed else None


@functools.lru_cache(maxsize=65_536)  # the same few addresses come back all the time
def parse_ip(text: str) -> tuple[str, IPv4Address | IPv6Address] | None:
    """(canonical text, address) of an unscoped IP address; None if `text` is not one."""
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        return None
    return str(address), address
