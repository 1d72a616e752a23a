"""Packets per second through Translator.outgoing()/incoming(), for a quick look.

python -m net_manager.dataplane.core.microbench [packets]: one CPython thread, no I/O, a
packet copied into a preallocated bytearray before each call (as a recv_into would).
Prints a table; asserts nothing. Builds its packets itself (no scapy at runtime).
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Callable
from ipaddress import ip_address

from net_manager.dataplane.core.packet import TCP, UDP, checksum
from net_manager.dataplane.core.translate import (
    DELIVER,
    Action,
    Endpoint,
    ServiceEntry,
    Snapshot,
    Translator,
    Verdict,
    build_snapshot,
)

X1, X3 = "X.default.X1.default", "X.default.X3.default"
CLIENT = Endpoint(X1, 0, "10.18.0.2", "fc00::2", "10.30.0.2", "fdff::2", "131.1.0.1", 50103)
SERVERS = (
    Endpoint(X3, 0, "10.18.0.66", "fc00::102", "10.30.0.6", "fdff::6", "131.1.21.5", 55301),
    Endpoint(X3, 1, "10.18.0.67", "fc00::103", "10.30.0.7", "fdff::7", "131.1.21.6", 55301),
)
RR = ServiceEntry("10.30.1.30", "fdff:2000::30", "RR", SERVERS)


def build_packet(src: str, dst: str, proto: int, sport: int, dport: int, size: int = 64) -> bytes:
    """An IPv4/IPv6 TCP or UDP packet with valid checksums and size bytes of payload."""
    s, d = ip_address(src).packed, ip_address(dst).packed
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    if proto == TCP:
        l4 = struct.pack("!HHIIHHHH", sport, dport, 1, 0, 0x5018, 65535, 0, 0) + payload
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    csum_at = 16 if proto == TCP else 6
    pseudo = s + d + struct.pack("!IxxxB", len(l4), proto)
    csum = checksum(pseudo + l4) or 0xFFFF
    l4 = l4[:csum_at] + struct.pack("!H", csum) + l4[csum_at + 2 :]
    if len(s) == 16:
        return struct.pack("!IHBB", 0x60000000, len(l4), proto, 64) + s + d + l4
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0) + s + d
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + l4


def _rate(call: Callable[[bytearray, int], Verdict], packet: bytes, count: int) -> float:
    buf = bytearray(2048)
    n = len(packet)
    start = time.perf_counter()
    for _ in range(count):
        buf[:n] = packet
        call(buf, n)
    return count / (time.perf_counter() - start)


def _check(call: Callable[[bytearray, int], Verdict], packet: bytes, want: Action) -> None:
    """Make sure a case measures a translation, not a drop."""
    buf = bytearray(packet)
    verdict = call(buf, len(buf))
    if verdict.action is not want or buf == packet:
        raise RuntimeError(f"microbench case not translated: {verdict}")


def _admitted(translator: Translator, sender: str) -> Callable[[bytearray, int], Verdict]:
    """incoming() behind the tunnel's admission check, as the loop calls it."""
    from_tunnel = translator.from_tunnel
    return lambda buf, n: from_tunnel(buf, n, sender)


def _new_flows(snapshot: Snapshot, count: int) -> float:
    translator = Translator(snapshot)
    packets = [build_packet("10.18.0.2", "10.30.1.30", TCP, 1024 + i, 30443) for i in range(count)]
    buf = bytearray(2048)
    start = time.perf_counter()
    for packet in packets:
        n = len(packet)
        buf[:n] = packet
        translator.outgoing(buf, n)
    return count / (time.perf_counter() - start)


def run(count: int = 200_000) -> dict[str, float]:
    """Packets per second for each case."""
    snapshot = build_snapshot([RR], [CLIENT], CLIENT.node_ip)
    baseline = build_packet("10.18.0.2", "10.30.1.30", TCP, 34278, 30443)
    results = {"copy into the buffer only": _rate(lambda buf, n: DELIVER, baseline, count)}
    for family, (client, service, server) in {
        "v4": ("10.18.0.2", "10.30.1.30", "10.30.0.6"),
        "v6": ("fc00::2", "fdff:2000::30", "fdff::6"),
    }.items():
        for proto, name in ((TCP, "tcp"), (UDP, "udp")):
            translator = Translator(snapshot)  # a fresh rotation: the flow goes to SERVERS[0]
            request = build_packet(client, service, proto, 34278, 30443)
            reply = build_packet(server, client, proto, 30443, 34278)
            _check(translator.outgoing, request, Action.REMOTE)
            _check(translator.incoming, reply, Action.DELIVER)
            results[f"outgoing {family} {name}"] = _rate(translator.outgoing, request, count)
            results[f"incoming {family} {name} (reply)"] = _rate(translator.incoming, reply, count)
            admitted = _admitted(translator, SERVERS[0].node_ip)
            _check(admitted, reply, Action.DELIVER)
            results[f"from the tunnel {family} {name} (reply, admission)"] = _rate(
                admitted, reply, count
            )
    results["outgoing v4 tcp, a new flow each"] = _new_flows(snapshot, min(count, 60_000))
    return results


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    count = int(args[0]) if args else 200_000
    for name, rate in run(count).items():
        print(f"{name:45} {rate:>12,.0f} packets/s")


if __name__ == "__main__":
    main()
