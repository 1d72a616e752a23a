"""The platform's fixed address ranges and pools, as pure arithmetic.

A pool is an ordered sequence of assignable addresses: service IPs, or the network
addresses of node subnets. nth() and index_of() map between a position and an address in
constant time, so an allocator can keep an integer cursor over pools of 2**107 addresses.
Which positions are taken, and reserving or freeing them, is the IPAM's job (root service
manager); the per-node container arithmetic is here, the container free list is the net
manager's. No I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_network,
)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

PLATFORM_V4 = IPv4Network("10.16.0.0/12")
PLATFORM_V6 = IPv6Network("fc00::/7")
SERVICE_V4 = IPv4Network("10.30.0.0/16")
SERVICE_V6 = IPv6Network("fdff::/16")
INSTANCE_V6_WINDOWS = (IPv6Network("fdff::/21"), IPv6Network("fdff:800::/21"))
CLOSEST_V6 = IPv6Network("fdff:1000::/21")
RR_V6 = IPv6Network("fdff:2000::/21")
TUN_V4 = IPv4Interface("10.19.1.254/12")
TUN_V6 = IPv6Interface("fcef::dead:beef/7")
NODE_SUBNET_V4_PREFIX = 26
NODE_SUBNET_V6_PREFIX = 120
CONTAINERS_PER_NODE_V4 = 61
CONTAINERS_PER_NODE_V6 = 254

_TUN_BLOCK_V4 = IPv4Network((TUN_V4.ip, NODE_SUBNET_V4_PREFIX), strict=False)
_TUN_BLOCK_V6 = IPv6Network((TUN_V6.ip, NODE_SUBNET_V6_PREFIX), strict=False)
_LAST_SUBNET_V4 = IPv4Address("10.31.255.192")
_LAST_SUBNET_V6 = IPv6Address("fdfd:ffff:ffff:ffff:ffff:ffff:ffff:ff00")
_PLATFORM: dict[int, IPNetwork] = {4: PLATFORM_V4, 6: PLATFORM_V6}
_SUBNET_PREFIX = {4: NODE_SUBNET_V4_PREFIX, 6: NODE_SUBNET_V6_PREFIX}
_CONTAINERS = {4: CONTAINERS_PER_NODE_V4, 6: CONTAINERS_PER_NODE_V6}


class Pool(enum.StrEnum):
    SERVICE_V4 = "service_v4"
    INSTANCE_V6 = "instance_v6"
    CLOSEST_V6 = "closest_v6"
    RR_V6 = "rr_v6"
    SUBNET_V4 = "subnet_v4"
    SUBNET_V6 = "subnet_v6"


class InvalidAddress(ValueError):
    """An address or subnet that is malformed or outside where it must be; says why."""


class PoolExhausted(RuntimeError):
    """For allocators: every address of a pool is taken. Not raised by this module."""


@dataclass(frozen=True)
class _Run:
    """`count` addresses starting at `first`, `step` apart (as integers)."""

    first: int
    count: int
    step: int


@dataclass(frozen=True)
class _Layout:
    version: int
    runs: tuple[_Run, ...]
    within: tuple[IPNetwork, ...]  # where a person is told the pool lies
    field: str  # default name of a user-given address of this pool, for messages
    reserved: str  # why an address inside `within` may still not be a member

    @property
    def size(self) -> int:
        return sum(run.count for run in self.runs)


def _hosts(network: IPNetwork) -> _Run:
    """Every address of `network` but its first (the all-zero host part)."""
    return _Run(int(network.network_address) + 1, network.num_addresses - 1, 1)


def _blocks(
    first: IPAddress, last: IPAddress, prefix: int, holes: list[IPNetwork]
) -> tuple[_Run, ...]:
    """Network addresses of the /prefix blocks from `first` to `last` inclusive, minus `holes`
    (block-aligned, inside the range, not overlapping)."""
    step = 1 << (first.max_prefixlen - prefix)
    runs, start = [], int(first)
    for hole in sorted(holes, key=lambda hole: int(hole.network_address)):
        runs.append(_Run(start, (int(hole.network_address) - start) // step, step))
        start = int(hole.broadcast_address) + 1
    runs.append(_Run(start, (int(last) - start) // step + 1, step))
    return tuple(runs)


_SERVICE_V4_RUN = _Run(int(SERVICE_V4.network_address) + 1, SERVICE_V4.num_addresses - 2, 1)
_LAYOUTS: dict[Pool, _Layout] = {
    Pool.SERVICE_V4: _Layout(
        4, (_SERVICE_V4_RUN,), (SERVICE_V4,), "RR_ip", "its first and last addresses are reserved"
    ),
    Pool.INSTANCE_V6: _Layout(
        6,
        tuple(_hosts(window) for window in INSTANCE_V6_WINDOWS),
        INSTANCE_V6_WINDOWS,
        "instance_ip_v6",
        "the first address of each window is reserved",
    ),
    Pool.CLOSEST_V6: _Layout(
        6, (_hosts(CLOSEST_V6),), (CLOSEST_V6,), "closest_ip_v6", "its first address is reserved"
    ),
    Pool.RR_V6: _Layout(6, (_hosts(RR_V6),), (RR_V6,), "RR_ip_v6", "its first address is reserved"),
    Pool.SUBNET_V4: _Layout(
        4,
        _blocks(
            PLATFORM_V4.network_address,
            _LAST_SUBNET_V4,
            NODE_SUBNET_V4_PREFIX,
            [SERVICE_V4, _TUN_BLOCK_V4],
        ),
        (PLATFORM_V4,),
        "subnet_addr",
        f"node subnets are /26 network addresses outside {SERVICE_V4} and {_TUN_BLOCK_V4}",
    ),
    Pool.SUBNET_V6: _Layout(
        6,
        _blocks(
            PLATFORM_V6.network_address, _LAST_SUBNET_V6, NODE_SUBNET_V6_PREFIX, [_TUN_BLOCK_V6]
        ),
        (PLATFORM_V6,),
        "subnet_addr_v6",
        f"node subnets are /120 network addresses from fc00:: to {_LAST_SUBNET_V6}"
        f" outside {_TUN_BLOCK_V6}",
    ),
}


def _layout(pool: Pool) -> _Layout:
    try:
        return _LAYOUTS[pool]
    except KeyError:
        raise ValueError(f"unknown pool {pool!r}") from None


def _show(value: object) -> str:
    """repr() of user input, shortened so a huge value cannot flood an error message."""
    text = repr(value)
    return text if len(text) <= 100 else f"{text[:80]}...{text[-15:]}"


def _address(version: int, value: int) -> IPAddress:
    return IPv4Address(value) if version == 4 else IPv6Address(value)


def _parse_strict(value: object, field: str) -> IPAddress:
    """`value` as an IP address, or InvalidAddress saying what is wrong with it."""
    if not isinstance(value, str):
        raise InvalidAddress(f"{field} must be a string, got {type(value).__name__}")
    try:
        address = ip_address(value)
    except ValueError:
        raise InvalidAddress(f"{field} {_show(value)} is not a valid IP address") from None
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        raise InvalidAddress(f"{field} {_show(value)} must not carry a scope id (%...)")
    return address


def _parse(value: object) -> IPAddress | None:
    try:
        return _parse_strict(value, "address")
    except InvalidAddress:
        return None


def pool_size(pool: Pool) -> int:
    """Number of addresses in `pool`."""
    return _layout(pool).size


def nth(pool: Pool, n: int) -> str:
    """The address at position `n` of `pool` (canonical string); IndexError outside 0..size-1."""
    layout = _layout(pool)
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"position in pool {pool} must be an int, got {type(n).__name__}")
    if not 0 <= n < layout.size:
        raise IndexError(f"position {n} is outside pool {pool} (0..{layout.size - 1})")
    for run in layout.runs:
        if n < run.count:
            return str(_address(layout.version, run.first + n * run.step))
        n -= run.count
    raise AssertionError("unreachable: n was checked against the pool size")


def index_of(pool: Pool, address: str) -> int | None:
    """Position of `address` (any valid spelling) in `pool`; None if it is not a member."""
    layout = _layout(pool)
    parsed = _parse(address)
    if parsed is None or parsed.version != layout.version:
        return None
    offset = 0
    for run in layout.runs:
        position, misalignment = divmod(int(parsed) - run.first, run.step)
        if misalignment == 0 and 0 <= position < run.count:
            return offset + position
        offset += run.count
    return None


def in_pool(pool: Pool, address: str) -> bool:
    return index_of(pool, address) is not None


def parse_user_address(pool: Pool, value: object, *, field: str | None = None) -> str:
    """A user-given address for `pool` in canonical form, or InvalidAddress naming `field`
    (default: the descriptor field of the pool, e.g. RR_ip) and what is wrong."""
    layout = _layout(pool)
    field = field or layout.field
    address = _parse_strict(value, field)
    if address.version != layout.version:
        hint = ""
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            hint = f"; write it as {address.ipv4_mapped}"
        raise InvalidAddress(f"{field} {_show(value)} is not an IPv{layout.version} address{hint}")
    if index_of(pool, str(address)) is None:
        networks = " or ".join(str(network) for network in layout.within)
        if not any(address in network for network in layout.within):
            raise InvalidAddress(f"{field} {_show(value)} is not in {networks}")
        raise InvalidAddress(
            f"{field} {_show(value)} is in {networks} but not assignable: {layout.reserved}"
        )
    return str(address)


def is_service_ip(address: str) -> bool:
    """True if the proxy handles `address`: in 10.30.0.0/16 or fdff::/16."""
    parsed = _parse(address)
    return parsed is not None and (parsed in SERVICE_V4 or parsed in SERVICE_V6)


def _node_subnet(subnet: str) -> IPNetwork:
    """The /26 or /120 of the platform whose network address is `subnet`, else InvalidAddress."""
    address = _parse_strict(subnet, "subnet")
    network = ip_network(f"{address}/{_SUBNET_PREFIX[address.version]}", strict=False)
    if network.network_address != address:
        raise InvalidAddress(
            f"subnet {_show(subnet)} is not the network address of a /{network.prefixlen}"
            f" (that would be {network.network_address})"
        )
    if address not in _PLATFORM[address.version]:
        raise InvalidAddress(f"subnet {_show(subnet)} is not in {_PLATFORM[address.version]}")
    return network


def bridge_address(subnet: str) -> str:
    """The node bridge's address in `subnet`: subnet + 1."""
    return str(_node_subnet(subnet).network_address + 1)


def container_address(subnet: str, n: int) -> str:
    """The n-th container (namespace) address of `subnet`: subnet + 2 + n."""
    network = _node_subnet(subnet)
    limit = _CONTAINERS[network.version]
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"container number must be an int, got {type(n).__name__}")
    if not 0 <= n < limit:
        raise IndexError(f"container number {n} is outside subnet {subnet} (0..{limit - 1})")
    return str(network.network_address + 2 + n)


def subnet_of(address: str) -> str | None:
    """The node subnet (network address) holding `address`; None outside the platform."""
    parsed = _parse(address)
    if parsed is None or parsed not in _PLATFORM[parsed.version]:
        return None
    prefix = _SUBNET_PREFIX[parsed.version]
    return str(ip_network(f"{parsed}/{prefix}", strict=False).network_address)
