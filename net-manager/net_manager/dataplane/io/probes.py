"""RTT probes between data planes over the tunnel port, for the Closest policy.

Tunnel datagrams whose first nibble is 4 or 6 are packets; the rest are ours
(the tunnel's control range), and upstream nodes drop them. A probe or an echo is 16 bytes:

    magic 0xA5 | kind (1 probe, 2 echo) | capabilities u16 | nonce u32 | token u64

Capabilities are bit flags a node announces in its probes and echoes: CAP_GSO (takes GSO
frames), CAP_VXLAN (runs the kernel tunnel, `dataplane/kernel/`), and, in an echo only,
CAP_VXLAN_PEER: "I have verified you as a kernel-tunnel peer", i.e. the echoing node has
seen an echo from the prober, with its own nonce and CAP_VXLAN, so it admits (or is about
to admit) the prober's VXLAN traffic. A node in kernel mode also probes the nodes that
probe it with CAP_VXLAN (`callers`, at most MAX_CALLERS), even when its table does not
know them: a server's node must know the callers' nodes to send replies back.
The prober sends a probe to every peer node every interval; the peer sends the same
bytes back as an echo (with its own capabilities), and the RTT is now - token. Only
echoes carrying this process's nonce count, so forged echoes cannot skew the RTTs.
RTTs are smoothed (EWMA) into the rtt dict the Closest policy reads (node_ip ->
seconds); a peer silent for `stale_after` intervals is removed from it. Pure: the loop
sends what probes_due()/handle() return.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Callable, Iterable

MAGIC = 0xA5
PROBE, ECHO = 1, 2
CAP_GSO = 0x0001  # takes GSO frames (loop.py: TUN offload on both ends)
CAP_VXLAN = 0x0002  # runs the kernel tunnel (oak-vx0)
CAP_VXLAN_PEER = 0x0004  # (echo) has verified the prober as a kernel-tunnel peer
MAX_CALLERS = 256
PACKET = struct.Struct("!BBHIQ")
SIZE = PACKET.size


def is_control(first_byte: int) -> bool:
    """Whether a tunnel datagram starting with this byte is ours rather than a packet."""
    return first_byte >> 4 not in (4, 6)


class Prober:
    """Probe schedule and RTT bookkeeping for the peers of the current table."""

    def __init__(
        self,
        rtt: dict[str, float],
        *,
        interval: float = 3.0,
        stale_after: int = 3,
        smoothing: float = 0.25,
        capabilities: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rtt = rtt
        self.interval = interval
        self.stale_after = stale_after
        self.smoothing = smoothing
        self.capabilities = capabilities
        self._clock = clock
        self._nonce = secrets.randbits(32)
        self._peers: dict[str, tuple[str, int]] = {}  # node_ip -> tunnel address
        # Nodes probing us with CAP_VXLAN that the table does not name: node_ip ->
        # (tunnel address, when it last probed us); probed back while they keep probing.
        self._callers: dict[str, tuple[tuple[str, int], float]] = {}
        self._urgent: list[tuple[str, int]] = []  # new callers: probed at the next call
        self._last_echo: dict[str, float] = {}
        self.peer_capabilities: dict[str, int] = {}
        self._next_round = 0.0
        self.sent = 0
        self.echoes = 0
        self.bad = 0

    def set_peers(self, addresses: Iterable[tuple[str, int]]) -> None:
        """The peers to probe: (node_ip, node_port) of every remote endpoint."""
        self._peers = {node_ip: (node_ip, port) for node_ip, port in addresses}
        for node_ip in [n for n in self.rtt if n not in self._peers and n not in self._callers]:
            self._forget(node_ip)
        self._next_round = 0.0  # probe new peers soon

    def probes_due(self, now: float | None = None) -> list[tuple[bytes, tuple[str, int]]]:
        """(datagram, address) pairs to send now; empty until the next round is due."""
        now = self._clock() if now is None else now
        token = int(now * 1e9) & 0xFFFFFFFFFFFFFFFF
        datagram = PACKET.pack(MAGIC, PROBE, self.capabilities, self._nonce, token)
        if now < self._next_round:
            urgent, self._urgent = self._urgent, []
            self.sent += len(urgent)
            return [(datagram, address) for address in urgent]
        self._urgent = []
        self._next_round = now + self.interval
        self._expire(now)
        addresses = {*self._peers.values(), *(a for a, _ in self._callers.values())}
        self.sent += len(addresses)
        return [(datagram, address) for address in sorted(addresses)]

    def handle(
        self,
        data: bytes | bytearray | memoryview,
        source_ip: str,
        address: tuple[str, int] | None = None,
    ) -> bytes | None:
        """Take a control datagram from source_ip (whose tunnel address is `address`);
        return the echo to send back, if any."""
        if len(data) < SIZE:
            self.bad += 1
            return None
        magic, kind, capabilities, nonce, token = PACKET.unpack_from(data)
        if magic != MAGIC or kind not in (PROBE, ECHO):
            self.bad += 1
            return None
        if kind == PROBE:
            return self._echo(capabilities, nonce, token, source_ip, address)
        known = source_ip in self._peers or source_ip in self._callers
        if nonce != self._nonce or not known:
            self.bad += 1
            return None
        now = self._clock()
        sample = now - token / 1e9
        if not 0 <= sample < self.interval * self.stale_after:
            self.bad += 1
            return None
        self.echoes += 1
        old = self.rtt.get(source_ip)
        self.rtt[source_ip] = sample if old is None else old + self.smoothing * (sample - old)
        self._last_echo[source_ip] = now
        self.peer_capabilities[source_ip] = capabilities
        return None

    def _echo(
        self,
        capabilities: int,
        nonce: int,
        token: int,
        source_ip: str,
        address: tuple[str, int] | None,
    ) -> bytes:
        mine = self.capabilities
        if mine & CAP_VXLAN and capabilities & CAP_VXLAN:
            if self.peer_capabilities.get(source_ip, 0) & CAP_VXLAN:
                mine |= CAP_VXLAN_PEER
            if address is not None and source_ip not in self._peers:
                self._note_caller(source_ip, address)
        return PACKET.pack(MAGIC, ECHO, mine, nonce, token)

    def _note_caller(self, node_ip: str, address: tuple[str, int]) -> None:
        if node_ip not in self._callers:
            if len(self._callers) >= MAX_CALLERS:
                return
            self._urgent.append(address)
        self._callers[node_ip] = (address, self._clock())

    def peers_with(self, capability: int) -> list[tuple[str, int]]:
        """Tunnel addresses of the peers whose last echo announced capability."""
        return [
            address
            for node_ip, address in self._peers.items()
            if self.peer_capabilities.get(node_ip, 0) & capability
        ]

    def _expire(self, now: float) -> None:
        limit = self.interval * self.stale_after
        for node_ip in [n for n, (_, t) in self._callers.items() if now - t > limit]:
            del self._callers[node_ip]
            if node_ip not in self._peers:
                self._forget(node_ip)
        for node_ip in [n for n, t in self._last_echo.items() if now - t > limit]:
            self._forget(node_ip)

    def _forget(self, node_ip: str) -> None:
        self.rtt.pop(node_ip, None)
        self._last_echo.pop(node_ip, None)
        self.peer_capabilities.pop(node_ip, None)
