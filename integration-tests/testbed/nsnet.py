"""Talk to things inside a network namespace from this process, without leaving ours.

`NetnsSockets(path)` keeps one thread that has entered the namespace (setns(2) moves
only the calling thread) and makes sockets there on request; a socket stays in the
namespace it was made in, whichever thread then uses it. So this process can be an
HTTP client of a manager in the infra namespace, or a "container" opening a
connection to a service IP, while its own threads and its own network stay where they
are. Nothing is ever configured: sockets are only created, connected and closed.

Helpers on top: `http_call` (one HTTP/1.1 request, JSON decoded) and `udp_exchange`
(one datagram out, one back).
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import queue
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """A namespace that cannot be entered; the message names it."""


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"cannot enter namespace {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsSockets:
    """Makes sockets inside one network namespace (see the module doc)."""

    def __init__(self, path: str) -> None:
        self.path = path
        if os.stat(path).st_ino == os.stat("/proc/self/ns/net").st_ino:
            raise NetnsError(f"{path} is this process's own namespace")
        self._requests: queue.Queue = queue.Queue()
        started: Future = Future()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name=f"netns[{path}]", daemon=True
        )
        self._thread.start()
        started.result(timeout=5)

    def _serve(self, started: Future) -> None:
        try:
            _enter(self.path)
        except (OSError, NetnsError) as err:
            started.set_exception(NetnsError(f"cannot enter namespace {self.path}: {err}"))
            return
        started.set_result(None)
        while (request := self._requests.get()) is not None:
            future, family, kind = request
            try:
                future.set_result(socket.socket(family, kind))
            except OSError as err:
                future.set_exception(err)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM):
        if not self._thread.is_alive():
            raise NetnsError(f"namespace {self.path} is closed")
        future: Future = Future()
        self._requests.put((future, family, kind))
        return future.result(timeout=5)

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        """A TCP connection from inside the namespace."""
        sock = self.socket(_family(host), socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=5)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _Connection(http.client.HTTPConnection):
    def __init__(self, sockets: NetnsSockets, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._sockets = sockets
        self._target = (host, port)

    def connect(self) -> None:
        self.sock = self._sockets.connect(*self._target, timeout=self.timeout)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # decoded JSON, else text

    def json(self) -> Any:
        return self.body


def http_call(
    sockets: NetnsSockets,
    method: str,
    url: str,
    body: Any = None,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One HTTP request from inside the namespace; OSError when nothing answers."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    connection = _Connection(sockets, host, parts.port or 80, timeout)
    try:
        payload = json.dumps(body) if body is not None else None
        headers = dict(headers or {})
        if payload is not None:
            headers["Content-Type"] = "application/json"
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, path or "/", payload, headers)
        response = connection.getresponse()
        text = response.read().decode(errors="replace")
    finally:
        connection.close()
    try:
        decoded: Any = json.loads(text) if text else None
    except ValueError:
        decoded = text
    return Reply(response.status, decoded)


def udp_exchange(
    sockets: NetnsSockets, host: str, port: int, data: bytes, timeout: float = 5.0
) -> tuple[bytes, str]:
    """Send one datagram from inside the namespace; the answer and the address it came from."""
    sock = sockets.socket(_family(host), socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        sock.sendto(data, (host, port))
        answer, peer = sock.recvfrom(65535)
    finally:
        sock.close()
    return answer, peer[0]
