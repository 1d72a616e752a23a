"""gunicorn's threaded worker, made safe against slow and idle clients, answering JSON.

gunicorn's `gthread` worker hands a new connection to a thread of its pool at once, and
that thread then blocks in a read without a timeout: eight clients that connect and send
half a request hold eight threads, and nobody else is answered. This worker:

- reads each request head (up to the blank line) in the worker's event loop, without a
  thread; only a complete head goes to a thread. A head that has not arrived
  `HEAD_TIMEOUT` seconds after the connection was opened (or kept alive) closes it;
- gives every blocking read and write in a thread a timeout (`READ_TIMEOUT`), so a client
  that stops sending a body mid-way reads as gone instead of holding the thread;
- answers requests gunicorn refuses before the app sees them (request line or headers too
  long, malformed) with the project's JSON error body instead of an HTML page.

It relies on gthread internals (`TConn`, the poller, `pending_conns`), so gunicorn is
pinned; `serve` selects it in place of "gthread".
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import time
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn.http import errors as http_errors
from gunicorn.workers import gthread

from oakestra_net.log import RateLimitedLog, get_logger

HEAD_TIMEOUT = 10.0
READ_TIMEOUT = 10.0
# Past this many buffered bytes without the end of the head, the parser takes over and
# refuses the request with its own limits (request line, header count and size).
MAX_BUFFERED_HEAD = 64 * 1024

log = get_logger(__name__)
refusals = RateLimitedLog(log)

_STATUS_OF = (
    (http_errors.LimitRequestLine, HTTPStatus.REQUEST_URI_TOO_LONG),
    (http_errors.LimitRequestHeaders, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE),
    (http_errors.UnsupportedTransferCoding, HTTPStatus.NOT_IMPLEMENTED),
    (http_errors.ForbiddenProxyRequest, HTTPStatus.FORBIDDEN),
    (http_errors.ExpectationFailed, HTTPStatus.EXPECTATION_FAILED),
    (http_errors.InvalidResponseHeader, HTTPStatus.INTERNAL_SERVER_ERROR),
    (http_errors.InvalidResponseHeaderName, HTTPStatus.INTERNAL_SERVER_ERROR),
    (http_errors.ConfigurationProblem, HTTPStatus.INTERNAL_SERVER_ERROR),
    (http_errors.ParseException, HTTPStatus.BAD_REQUEST),
)


class TimedSocket(socket.socket):
    """A client socket whose blocking mode has a timeout; a read that times out reads as
    the end of the stream (the client is treated as gone)."""

    __slots__ = ()

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(READ_TIMEOUT)
        else:
            super().setblocking(False)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        try:
            return super().recv(bufsize, flags)
        except TimeoutError:
            return b""

    @classmethod
    def adopt(cls, sock: socket.socket) -> TimedSocket:
        return cls(sock.family, sock.type, sock.proto, fileno=sock.detach())


class ThreadWorker(gthread.ThreadWorker):
    """`gthread` with request heads read in the event loop and bounded reads (see above)."""

    def is_parent_alive(self) -> bool:
        """When the master is gone (killed, so no SIGTERM came), stop serving at once.
        gunicorn lets the orphan drain for up to `graceful_timeout` (30 s) with its
        listening sockets open and its kept-alive connections served: a restarted server
        cannot bind the port, new clients wait in a backlog nobody accepts, and clients
        on kept-alive connections keep talking to a process whose state is gone (a
        cluster kept reading the dead root's store generation and did not rebuild the
        new one). So: listeners closed, no drain (requests already in a thread finish),
        kept-alive connections closed."""
        if super().is_parent_alive():
            return True
        self.set_accept_enabled(False)
        for listener in self.sockets:
            listener.close()
        self.cfg.set("graceful_timeout", 0)
        return False

    def accept(self, listener: Any) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        sock = TimedSocket.adopt(client_sock)
        conn = gthread.TConn(self.cfg, sock, client_addr, listener.getsockname())
        if self.cfg.is_ssl:  # the head is encrypted: leave it to the thread, bounded reads
            conn.data_ready = True
            self.enqueue_req(conn)
        else:
            self._await_head(conn)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection starts its next request: wait for its whole head."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        if self.cfg.is_ssl:
            self.enqueue_req(conn)
        else:
            self._await_head(conn)

    def _await_head(self, conn: Any) -> None:
        conn.head = b""
        conn.timeout = time.monotonic() + HEAD_TIMEOUT
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_head, conn))

    def _read_head(self, conn: Any, client: Any) -> None:
        try:
            chunk = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if chunk:
            conn.head += chunk
            if b"\r\n\r\n" not in conn.head and len(conn.head) < MAX_BUFFERED_HEAD:
                return
        self.poller.unregister(client)
        self.pending_conns.remove(conn)
        if not chunk:  # the client closed the connection before a whole head
            self.nr_conns -= 1
            conn.close()
            return
        conn.data_ready = True
        self.enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        head = getattr(conn, "head", b"")
        if head:
            conn.head = b""
            conn.init()
            conn.parser.unreader.unread(head)
        return super().handle(conn)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's error answer, as the JSON body the apps use (`{"error", "reason"}`)."""
        status = next(
            (code for kind, code in _STATUS_OF if isinstance(exc, kind)),
            HTTPStatus.INTERNAL_SERVER_ERROR,
        )
        peer = addr[0] if addr else ""
        if status == HTTPStatus.INTERNAL_SERVER_ERROR:
            self.log.exception("error handling request")
            reason = "internal error"
        else:
            reason = str(exc)[:200] or status.phrase
            refusals.info(
                f"refused {status.value}", "HTTP request refused", peer=peer, reason=reason
            )
        body = json.dumps({"error": status.phrase, "reason": reason}).encode()
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        try:
            client.sendall(head + body)
        except OSError:
            pass
