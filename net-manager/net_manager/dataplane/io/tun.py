"""The data plane's TUN device: create it, address it, bring it up, and close it.

open_tun() creates a TUN (IFF_TUN | IFF_NO_PI, non-blocking) with python-pytun, gives it
its IPv4 address/prefix and MTU, brings it up, then adds its IPv6 address/prefix. The
/12 and /7 prefixes make the kernel route the whole platform range (10.16.0.0/12,
fc00::/7) to the TUN; node subnets on the bridge are more specific.

pytun only sets IPv4 addresses, so the IPv6 one is set with the SIOCSIFADDR ioctl on an
AF_INET6 socket and a struct in6_ifreq (no `ip` binary, no subprocess). TUN devices are
IFF_NOARP, so the kernel does no duplicate address detection and the address is usable
at once. The device lives as long as its file descriptor: close() (or the process's
exit) removes it. Reading and writing packets is the loop's job.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct

import pytun

MAX_NAME = 15  # IFNAMSIZ - 1
SIOCSIFADDR = 0x8916
SIOCSIFTXQLEN = 0x8943
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
VNET_HDR_LEN = 10  # struct virtio_net_hdr, prefixed to every packet with IFF_VNET_HDR
_IN6_IFREQ = struct.Struct("16sIi")  # in6_addr, prefix length, ifindex
_IFREQ_INT = struct.Struct("16si12x")


# struct virtio_net_hdr (little-endian on x86 and arm): flags, gso_type, hdr_len, gso_size,
# csum_start, csum_offset.
VNET_HDR = struct.Struct("<BBHHHH")
NEEDS_CSUM = 0x01
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_ECN = 0x00, 0x01, 0x04, 0x80
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)  # a plain packet with a complete checksum


class TunError(OSError):
    """The TUN device could not be created or configured (the message names it)."""


class TunDevice:
    """An open, configured TUN device; fileno() is its non-blocking packet fd."""

    def __init__(self, device: pytun.TunTapDevice, offload: bool) -> None:
        self._device = device
        self.name: str = device.name
        self.offload = offload  # packets carry a virtio_net_hdr (VNET_HDR_LEN bytes)

    def fileno(self) -> int:
        return self._device.fileno()

    def close(self) -> None:
        self._device.close()

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_name(name: str) -> str:
    """name if it can name a network device; TunError otherwise."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise TunError(f"TUN name {name!r} must have 1 to {MAX_NAME} characters")
    if any(c in name for c in "/: \t\n") or name in (".", ".."):
        raise TunError(f"TUN name {name!r} contains a character a device name cannot have")
    return name


def parse_interface(cidr: str, version: int) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """The address/prefix of the TUN; TunError if it is not an IPv<version> one."""
    try:
        interface = ipaddress.ip_interface(cidr)
    except ValueError:
        raise TunError(f"TUN address {cidr!r} is not an address/prefix") from None
    if interface.version != version or "/" not in cidr:
        raise TunError(f"TUN address {cidr!r} is not an IPv{version} address/prefix")
    return interface


def open_tun(
    name: str,
    v4_cidr: str,
    v6_cidr: str,
    mtu: int,
    *,
    offload: bool = False,
    txqueuelen: int = 1000,
) -> TunDevice:
    """Create and configure the TUN; an empty v6_cidr leaves IPv6 unset. TunError on failure.

    With offload, the device takes and hands out large TCP segments and partial
    checksums, each packet prefixed by a virtio_net_hdr (see loop.py).
    """
    check_name(name)
    v4 = parse_interface(v4_cidr, 4)
    v6 = parse_interface(v6_cidr, 6) if v6_cidr else None
    if not 576 <= mtu <= 65535:
        raise TunError(f"TUN {name}: MTU {mtu} is not between 576 and 65535")
    flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if offload else 0)
    try:
        device = pytun.TunTapDevice(name=name, flags=flags)
    except (pytun.Error, OSError) as err:
        raise TunError(f"cannot create TUN {name}: {err}") from None
    try:
        os.set_blocking(device.fileno(), False)
        if offload:
            _ioctl_int(device.fileno(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        device.addr = str(v4.ip)
        device.netmask = str(v4.netmask)
        device.mtu = mtu
        _set_txqueuelen(name, txqueuelen)
        device.up()
        if v6 is not None:
            set_ipv6_address(name, v6)
    except (pytun.Error, OSError) as err:
        device.close()
        raise TunError(f"cannot configure TUN {name}: {err}") from None
    return TunDevice(device, offload)


def set_ipv6_address(name: str, interface: ipaddress.IPv6Interface) -> None:
    """Add interface (address/prefix) to the device name with SIOCSIFADDR."""
    request = _IN6_IFREQ.pack(
        interface.ip.packed, interface.network.prefixlen, socket.if_nametoindex(name)
    )
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock, SIOCSIFADDR, request)
        except FileExistsError:
            pass  # already there: what we want


def _set_txqueuelen(name: str, length: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCSIFTXQLEN, _IFREQ_INT.pack(name.encode(), length))


def _ioctl_int(fd: int, request: int, value: int) -> None:
    fcntl.ioctl(fd, request, value)


# ---------------------------------------------------------------- offload helpers
# With offload the kernel hands out TCP segments of up to 64 KiB (gso_type, gso_size) and
# packets whose L4 checksum field only holds the pseudo-header sum (NEEDS_CSUM). A peer
# that cannot take them (see loop.py) gets ordinary packets made by these two helpers;
# they copy and allocate, which is fine off the hot path.


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit ones-complement sum of data (zero-padded to even length).

    A big-endian integer is congruent to the sum of its 16-bit words modulo 0xFFFF, so
    one int.from_bytes() and one modulo do the whole sum in C.
    """
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    total = int.from_bytes(data, "big") % 0xFFFF
    return total or (0xFFFF if any(data) else 0)


def finish_checksum(buf: bytearray, length: int, csum_start: int, csum_offset: int) -> bool:
    """Complete a NEEDS_CSUM packet's L4 checksum in place; False if the offsets are bad."""
    at = csum_start + csum_offset
    if not 0 < csum_start < at <= length - 2:
        return False
    value = ~ones_sum(memoryview(buf)[csum_start:length]) & 0xFFFF
    udp = csum_offset == 6
    if udp and value == 0:
        value = 0xFFFF
    buf[at] = value >> 8
    buf[at + 1] = value & 0xFF
    return True


def segment_tcp(packet: bytes | bytearray | memoryview, gso_size: int) -> list[bytes]:
    """Cut a large TCP packet (IPv4 or IPv6, no extension headers) into gso_size segments.

    Each segment gets its own length, sequence number, IPv4 id and header checksum, and
    a complete TCP checksum; FIN and PSH stay on the last segment, CWR on the first.
    ValueError if the packet is not such a TCP packet.
    """
    data = bytes(packet)
    version = data[0] >> 4
    l4 = (data[0] & 0x0F) * 4 if version == 4 else 40
    if version not in (4, 6) or len(data) < l4 + 20 or data[9 if version == 4 else 6] != 6:
        raise ValueError(f"cannot segment a {len(data)}-byte packet that is not plain TCP")
    tcp_len = (data[l4 + 12] >> 4) * 4
    head, payload = l4 + tcp_len, data[l4 + tcp_len :]
    if gso_size <= 0 or tcp_len < 20 or len(data) < head:
        raise ValueError(f"cannot segment: TCP header {tcp_len}, segment size {gso_size}")
    seq = int.from_bytes(data[l4 + 4 : l4 + 8], "big")
    chunks = [payload[i : i + gso_size] for i in range(0, len(payload), gso_size)] or [b""]
    return [
        _segment(data, version, l4, tcp_len, chunk, seq + i * gso_size, i, len(chunks))
        for i, chunk in enumerate(chunks)
    ]


def _segment(
    data: bytes, version: int, l4: int, tcp_len: int, chunk: bytes, seq: int, i: int, n: int
) -> bytes:
    ip = bytearray(data[:l4])
    tcp = bytearray(data[l4 : l4 + tcp_len])
    tcp[4:8] = (seq & 0xFFFFFFFF).to_bytes(4, "big")
    if i < n - 1:
        tcp[13] &= ~0x09 & 0xFF  # FIN, PSH only on the last segment
    if i > 0:
        tcp[13] &= ~0x80 & 0xFF  # CWR only on the first
    tcp[16:18] = b"\x00\x00"
    segment_len = tcp_len + len(chunk)
    if version == 4:
        ip[2:4] = (l4 + segment_len).to_bytes(2, "big")
        ip[4:6] = ((int.from_bytes(ip[4:6], "big") + i) & 0xFFFF).to_bytes(2, "big")
        ip[10:12] = b"\x00\x00"
        ip[10:12] = (~ones_sum(ip) & 0xFFFF).to_bytes(2, "big")
        pseudo = bytes(ip[12:20]) + b"\x00\x06" + segment_len.to_bytes(2, "big")
    else:
        ip[4:6] = segment_len.to_bytes(2, "big")
        pseudo = bytes(ip[8:40]) + segment_len.to_bytes(4, "big") + b"\x00\x00\x00\x06"
    tcp[16:18] = (~ones_sum(pseudo + tcp + chunk) & 0xFFFF).to_bytes(2, "big")
    return bytes(ip + tcp + chunk)
