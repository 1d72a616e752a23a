"""Argument checks for kernel operations (pure): names, MTUs, addresses, port mappings.

A bad argument is a ValueError naming it, raised before anything touches the kernel.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from net_manager.node.names import IFNAMSIZ, PREFIX


def check_ifname(name: Any) -> None:
    if not isinstance(name, str) or not 0 < len(name) <= IFNAMSIZ or "/" in name or " " in name:
        raise ValueError(
            f"invalid interface name {name!r} (1-{IFNAMSIZ} characters, no / or space)"
        )


def check_own_name(name: Any) -> None:
    check_ifname(name)
    if not name.startswith(PREFIX):
        raise ValueError(f"interface name {name!r} must start with {PREFIX!r}")


def check_mtu(mtu: Any) -> None:
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise ValueError(f"invalid MTU {mtu!r} (68-65535)")


def interface_of(cidr: Any, version: int, what: str) -> Any:
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError:
        raise ValueError(
            f"invalid {what} {cidr!r}: expected an IPv{version} address/prefix"
        ) from None
    if iface.version != version or "/" not in str(cidr):
        raise ValueError(f"invalid {what} {cidr!r}: expected an IPv{version} address/prefix")
    return iface


def address_of(value: Any, version: int, what: str) -> Any:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"invalid {what} {value!r}: expected an IPv{version} address") from None
    if address.version != version:
        raise ValueError(f"invalid {what} {value!r}: expected an IPv{version} address")
    return address


def network_of(value: Any, version: int, what: str) -> str:
    try:
        network = ipaddress.ip_network(value)
    except (ValueError, TypeError):
        raise ValueError(f"invalid {what} {value!r}: expected an IPv{version} network") from None
    if network.version != version:
        raise ValueError(f"invalid {what} {value!r}: expected an IPv{version} network")
    return str(network)


def mapping_key(mapping: Any) -> tuple[int, int, str]:
    """(host_port, container_port, protocol) of a port mapping, validated."""
    try:
        host_port, container_port, protocol = (
            mapping.host_port,
            mapping.container_port,
            mapping.protocol,
        )
    except AttributeError:
        raise ValueError(
            f"invalid port mapping {mapping!r}: needs host_port, container_port, protocol"
        ) from None
    for port in (host_port, container_port):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"invalid port mapping {mapping!r}: port {port!r} not in 1-65535")
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"invalid port mapping {mapping!r}: protocol must be tcp or udp")
    return host_port, container_port, protocol
