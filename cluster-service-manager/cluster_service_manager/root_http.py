"""One kept-alive HTTP/1.1 connection to the root per calling thread (`http.client`).

requests + urllib3 spent about a third of the cluster's CPU per forwarded table query on
per-call work (preparing the request, the pool, header dictionaries, parsing the answer
through `email`), more than the root call itself needs. This transport sends a JSON
request on the thread's own connection and reads the whole answer; what it leaves to the
root client: retries, which failures may be retried, and what an answer means.

Timeouts are requests' (`timeout` bounds the connect and every read). TLS verifies with
the CA bundle requests would use (`verify`: True, False or a bundle path). A kept-alive
connection the root closed while idle is noticed before reuse (it reads as readable)
and replaced, as urllib3 does. One idle for more than `REUSE_IDLE_SECONDS` is replaced
without being tried: the root (gunicorn closes after 5 idle seconds) or a proxy may be
closing it just as the request goes out, and a POST lost that way looks maybe-sent, which
the root client does not retry. Proxies, client certificates and credentials in the URL
are not handled here: the root client keeps requests for those (`usable_for`).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os.path
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests.utils

REUSE_IDLE_SECONDS = 2.0  # well inside the root's 5 s keep-alive


class NoAnswer(Exception):
    """The request failed before an answer came; `never_sent` when it surely did not
    reach the root (nothing listened, or the connection was not made in time)."""

    def __init__(self, reason: str, *, never_sent: bool) -> None:
        super().__init__(reason)
        self.never_sent = never_sent


@dataclass(frozen=True)
class Answer:
    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class RootHttp:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        verify: bool | str = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"root URL must be http(s)://host[:port]: {base_url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._tls = _tls_context(verify) if self.https else None
        self._clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        # for close(); weak, so a finished thread's connection goes with its thread-local
        self._all: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()

    @staticmethod
    def usable_for(base_url: str, proxies: dict, cert: Any, auth: Any) -> bool:
        """Whether this transport can do what requests would for `base_url`."""
        parts = urlsplit(base_url)
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            return False  # requests reports it on every call, as before
        return (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and parts.username is None
            and not requests.utils.select_proxy(base_url, proxies)
            and cert is None
            and (auth is None or isinstance(auth, tuple))
        )

    def send(self, method: str, path: str, headers: dict[str, str], body: Any) -> Answer:
        """One request on this thread's connection; `NoAnswer` if no answer came."""
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers = {**headers, "Content-Type": "application/json"}
        conn, fresh = self._connection()
        try:
            if fresh:
                conn.connect()
        except ConnectionRefusedError as err:
            self._drop(conn)
            raise NoAnswer(f"ConnectionRefused: {err}", never_sent=True) from None
        except TimeoutError:
            self._drop(conn)
            raise NoAnswer(
                f"ConnectTimeout: no connection within {self.timeout} s", never_sent=True
            ) from None
        except OSError as err:
            self._drop(conn)
            raise NoAnswer(f"ConnectionError: {err}", never_sent=False) from None
        try:
            conn.request(method, self.prefix + path, data, headers)
            reply = conn.getresponse()
            content = reply.read()
        except TimeoutError:
            self._drop(conn)
            raise NoAnswer(
                f"ReadTimeout: no answer within {self.timeout} s", never_sent=False
            ) from None
        except (OSError, http.client.HTTPException) as err:
            self._drop(conn)
            raise NoAnswer(f"{type(err).__name__}: {err}", never_sent=False) from None
        if reply.will_close:
            self._drop(conn)
        else:
            self._local.idle_since = self._clock()
        return Answer(reply.status, content)

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if (
            conn is not None
            and conn.sock is not None
            and self._clock() - getattr(self._local, "idle_since", -math.inf) <= REUSE_IDLE_SECONDS
            and not _closed_by_peer(conn.sock)
        ):
            return conn, False
        if conn is not None:
            self._drop(conn)
        if self._tls is not None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self._local.conn = conn
        with self._lock:
            self._all.add(conn)
        return conn, True

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            self._all.discard(conn)

    def close(self) -> None:
        with self._lock:
            conns, self._all = list(self._all), weakref.WeakSet()
        for conn in conns:
            conn.close()


def basic_auth(auth: tuple[str, str]) -> str:
    """The Authorization header requests sends for a (user, password) pair (.netrc)."""
    user, password = auth
    token = base64.b64encode(f"{user}:{password}".encode("latin-1")).decode()
    return f"Basic {token}"


def _tls_context(verify: bool | str) -> ssl.SSLContext:
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    bundle = requests.utils.DEFAULT_CA_BUNDLE_PATH if verify is True else verify
    if os.path.isdir(bundle):  # requests takes a directory of certificates too
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


def _closed_by_peer(sock: socket.socket) -> bool:
    """A kept-alive socket that is readable between requests was closed by the root (or
    holds bytes nobody asked for): not reusable."""
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
