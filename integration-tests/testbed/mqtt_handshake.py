"""What a broker answers to one MQTT 3.1.1 CONNECT: the least a client does to log in.

`connack(sock, …)` sends CONNECT (optionally with user name and password) on an open
socket, TLS-wrapped first when a CA file is given, and returns the CONNACK return code
(0 accepted, 4 bad user name or password, 5 not authorised), or raises `NoConnack`
when the broker closes the connection without one (a TLS-only listener spoken to in
clear, a failed TLS handshake). Used on sockets made inside a test's namespace, where
an MQTT library would open its own socket in the wrong one.
"""

from __future__ import annotations

import socket
import ssl
import struct


class NoConnack(ConnectionError):
    """The broker answered something else than a CONNACK, or nothing."""


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    flags = 0x02  # clean session
    payload = _text(client_id)
    if username is not None:
        flags |= 0x80
        payload += _text(username)
        if password is not None:
            flags |= 0x40
            payload += _text(password)
    variable = _text("MQTT") + bytes([4, flags]) + struct.pack("!H", 10)
    body = variable + payload
    return bytes([0x10]) + _remaining_length(len(body)) + body


def connack(
    sock: socket.socket,
    *,
    username: str | None = None,
    password: str | None = None,
    ca_file: str | None = None,
    server_hostname: str = "localhost",
    client_id: str = "",
) -> int:
    """The CONNACK return code for this login; closes the socket."""
    try:
        if ca_file is not None:
            context = ssl.create_default_context(cafile=ca_file)
            sock = context.wrap_socket(sock, server_hostname=server_hostname)
        sock.sendall(connect_packet(client_id, username, password))
        answer = b""
        while len(answer) < 4:
            chunk = sock.recv(4 - len(answer))
            if not chunk:
                break
            answer += chunk
        if len(answer) < 4 or answer[0] != 0x20:
            raise NoConnack(f"no CONNACK, got {answer!r}")
        if answer[3] == 0:
            sock.sendall(b"\xe0\x00")  # DISCONNECT
        return answer[3]
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as err:
        raise NoConnack(f"no CONNACK: {err}") from err
    finally:
        sock.close()
