"""Tunnel sockets per remote node, and socket helpers of the packet loop."""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import ip_address

SOCKET_BUFFER = 8 * 1024 * 1024
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # Linux; not exported by the socket module


class Peers:
    """How to send a datagram to each peer's tunnel address: send callables, cached."""

    def __init__(
        self,
        bound: socket.socket,
        *,
        connect: bool,
        buffer_size: int,
        seal: Callable[[bytes | bytearray | memoryview], bytes] | None = None,
    ) -> None:
        self._bound = bound
        self._seal = seal  # a sealed tunnel: every datagram is sealed on its way out
        self._connect = connect
        self._buffer_size = buffer_size
        self._sockets: dict[tuple[str, int], socket.socket] = {}
        self.senders: dict[tuple[str, int], Callable[[memoryview], int]] = {}
        self.frame_senders: dict[tuple[str, int], Callable[[list], int]] = {}
        # Peers admit our datagrams by their source address: send from this node's own
        # address (the bound one, else the node IP of the table) where it is local.
        self.source = _specific_address(bound)

    def __len__(self) -> int:
        return len(self.senders)

    def sender(self, address: tuple[str, int]) -> Callable[[memoryview], int]:
        """The send callable for address (created on first use)."""
        send = self.senders.get(address)
        if send is None:
            send = self._connected(address) if self._connect else self._sendto(address)
            if self._seal is not None:
                send = _sealing(send, self._seal)
            self.senders[address] = send
        return send

    def _connected(self, address: tuple[str, int]) -> Callable[[memoryview], int]:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        set_buffers(sock, self._buffer_size, receive=False)
        sock.setblocking(False)
        if self.source and (":" in self.source) == (family == socket.AF_INET6):
            try:
                sock.bind((self.source, 0))
            except OSError:  # not an address here (e.g. behind NAT): the route picks one
                pass
        sock.connect(address)
        self._sockets[address] = sock
        return sock.send

    def frame_sender(self, address: tuple[str, int]) -> Callable[[list], int]:
        """A sendmsg(buffers) callable for address (gather I/O: no copy of the packet)."""
        send = self.frame_senders.get(address)
        if send is None:
            whole = self.sender(address)
            sock = self._sockets.get(address)
            if self._seal is not None:
                send = lambda buffers: whole(b"".join(buffers))  # noqa: E731
            elif sock is not None:
                send = sock.sendmsg
            else:
                sendmsg, target = self._bound.sendmsg, bound_address(self._bound, address)
                send = lambda buffers: sendmsg(buffers, (), 0, target)  # noqa: E731
            self.frame_senders[address] = send
        return send

    def _sendto(self, address: tuple[str, int]) -> Callable[[memoryview], int]:
        target = bound_address(self._bound, address)
        sendto = self._bound.sendto
        return lambda data: sendto(data, target)

    def retain(self, addresses: set[tuple[str, int]]) -> None:
        """Forget peers that are not in addresses (closing their sockets)."""
        for address in [a for a in self.senders if a not in addresses]:
            del self.senders[address]
            self.frame_senders.pop(address, None)
            sock = self._sockets.pop(address, None)
            if sock is not None:
                sock.close()

    def close(self) -> None:
        self.retain(set())

    def set_source(self, node_ip: str) -> None:
        """Send from node_ip from now on (unless the tunnel socket is bound to one)."""
        source = "" if node_ip in ("0.0.0.0", "::") else node_ip
        if source == self.source or _specific_address(self._bound):
            return
        self.source = source
        self.close()  # sockets are made again, from the new address


def _specific_address(sock: socket.socket) -> str:
    try:
        host = sock.getsockname()[0]
    except OSError:
        return ""
    host = host[7:] if host.startswith("::ffff:") else host
    return "" if host in ("0.0.0.0", "::") else host


def _sealing(
    send: Callable[[bytes], int], seal: Callable[[bytes | bytearray | memoryview], bytes]
) -> Callable[[memoryview], int]:
    return lambda data: send(seal(data))


def bound_address(sock: socket.socket, address: tuple[str, int]) -> tuple[str, int]:
    """address as sock can send to it (IPv4 through a dual-stack IPv6 socket is mapped)."""
    if sock.family == socket.AF_INET6 and ":" not in address[0]:
        return (f"::ffff:{address[0]}", address[1])
    return address


def source_ip(address: tuple) -> str:
    """The sender's IP as node IPs are written (canonical, IPv4-mapped IPv6 reduced)."""
    host = address[0]
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return str(ip_address(host)) if ":" in host else host


def set_buffers(sock: socket.socket, size: int, *, receive: bool = True) -> None:
    """Large kernel buffers; the FORCE variants (root) go past net.core.[rw]mem_max."""
    options = [(SO_SNDBUFFORCE, socket.SO_SNDBUF)]
    if receive:
        options.append((SO_RCVBUFFORCE, socket.SO_RCVBUF))
    for forced, plain in options:
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
