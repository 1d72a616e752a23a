"""A TCP proxy between an MQTT client and a test broker that can reorder and lose packets.

It makes the timing races of a (re)connect deterministic: hold the broker's CONNACK
(the client's socket is open but its session is not up), drop the PUBLISH packets the
broker sends to the client (an answer in flight when the connection breaks), and cut
every connection (the client reconnects through the proxy).
"""

from __future__ import annotations

import socket
import threading

CONNACK = 2
PUBLISH = 3


def _read_packet(sock: socket.socket) -> bytes | None:
    """One whole MQTT packet (fixed header, remaining length, body), or None at EOF."""
    header = _read_exact(sock, 1)
    if header is None:
        return None
    length_bytes = b""
    length, shift = 0, 0
    while True:
        byte = _read_exact(sock, 1)
        if byte is None:
            return None
        length_bytes += byte
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    body = _read_exact(sock, length) if length else b""
    if body is None:
        return None
    return header + length_bytes + body


def _read_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


class MqttProxy:
    """Listens on a loopback port and forwards every connection to `broker_port`."""

    def __init__(self, broker_port: int, host: str = "127.0.0.1") -> None:
        self.broker = (host, broker_port)
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        self.hold_connack = threading.Event()  # set: CONNACKs wait until release_connack()
        self._connack_released = threading.Event()
        self.connack_held = threading.Event()  # a CONNACK is waiting in the proxy
        self.drop_publish_to_client = threading.Event()
        self.dropped = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="mqtt-proxy").start()

    def release_connack(self) -> None:
        self.hold_connack.clear()
        self._connack_released.set()

    def cut(self) -> None:
        """Close every proxied connection (both sides), as a broken network would."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.broker)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, to_client: bool) -> None:
        while (packet := _read_packet(source)) is not None:
            kind = packet[0] >> 4
            if to_client and kind == CONNACK and self.hold_connack.is_set():
                self.connack_held.set()
                self._connack_released.wait()
            if to_client and kind == PUBLISH and self.drop_publish_to_client.is_set():
                with self._lock:
                    self.dropped += 1
                continue
            try:
                sink.sendall(packet)
            except OSError:
                break
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
