"""Table queries to the cluster and their answers, correlated.

A query asks the cluster for the instances of a job by job name (`sname`) or by service
IP (`sip`) through a publish callable, then waits for the `tablequery/result` the MQTT
side hands to on_result(). A result answers every pending query whose key is its
`app_name`, its `query_key`, or any address in any instance's `service_ip` list
(upstream's correlation), so a query by an RR IP and one by the job's name are answered
by the same result. Keys are the canonical IP for `sip` queries, else the job name.

Fixes of upstream (which failed a second query for a pending key, and never cleared a
key whose query timed out): queries for a pending key are coalesced (one publish, every
waiter gets the same result); a timed-out or failed key is cleared, so the next query
publishes again; a result arriving after the timeout resolves nothing. Coalesced
queries share the deadline of the request already sent. At most `max_pending` keys wait
at once (a flood of misses must not flood the cluster); beyond that a query fails at
once.

An answer can be lost: published before the node's result subscription is live, or
while the node is reconnecting (the session is not persistent). So a pending request is
sent again with backoff (`retry`, from the housekeeping tick) and at once when the
result subscription becomes live again (`resend_pending`). A query made with
`until_answered` survives its deadline: it is asked again with bounded backoff until
an answer comes or the caller stops wanting it (the node's own jobs: without the
answer the node does not know its instances' service IPs).

Callbacks run on the thread that resolves the query (on_result, expire, or query_async
itself when the query fails immediately); an exception in a callback is logged and does
not stop the others. Never block in query() on the thread that delivers results (the
MQTT loop): the answer could not arrive. Applying a result to the translation table is
the caller's job.
Thread-safe; the clock is injectable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from oakestra_net.log import get_logger
from oakestra_net.messages import TableQueryRequest, TableQueryResult
from oakestra_net.names import InvalidName, parse_job_name
from oakestra_net.services import canonical_ip

log = get_logger(__name__)

DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_PENDING = 4096
RETRY_FIRST_SECONDS = 0.5  # first resend of an unanswered request; doubles each time
RETRY_MAX_SECONDS = 8.0  # the backoff's bound
Callback = Callable[[TableQueryResult | None], None]


class QueryTimeout(Exception):
    """No answer to a table query in time, or the query could not be sent; says which."""


@dataclass(eq=False)
class _Pending:
    """One key's outstanding request and everyone waiting for its answer."""

    key: str
    deadline: float
    request: TableQueryRequest
    next_send: float
    interval: float = RETRY_FIRST_SECONDS
    done: threading.Event = field(default_factory=threading.Event)
    result: TableQueryResult | None = None
    finished: bool = False
    callbacks: list[Callback] = field(default_factory=list)
    waiters: int = 0  # queries joined, blocking or not


@dataclass(eq=False)
class _Persistent:
    """A query asked again after each failure until answered, while `wanted()`."""

    sname: str
    sip: str
    wanted: Callable[[], bool]
    next_query: float
    interval: float = RETRY_FIRST_SECONDS


class TableQueries:
    """Sends table queries through `publish` and matches the results to their waiters."""

    def __init__(
        self,
        publish: Callable[[TableQueryRequest], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = DEFAULT_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"table query timeout must be > 0 seconds, got {timeout!r}")
        if max_pending < 1:
            raise ValueError(f"table query max_pending must be >= 1, got {max_pending!r}")
        self._publish = publish
        self._clock = clock
        self.timeout = float(timeout)
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._persistent: dict[str, _Persistent] = {}

    def query(
        self, *, sname: str = "", sip: str = "", wait: bool = True
    ) -> TableQueryResult | None:
        """Ask for a job by name or service IP; with `wait`, block for the result.

        Without `wait` the request is sent (unless one for the key is pending) and None is
        returned; the result still resolves later waiters. Raises QueryTimeout when no
        answer comes within the timeout or the request cannot be sent, ValueError for a
        malformed name or address.
        """
        key, request = _request(sname, sip)
        pending, is_new = self._join(key, request, None)
        if pending is None:
            raise QueryTimeout(f"table query {key!r} refused: {self._max_pending} pending")
        if is_new:
            self._send(pending)
        if not wait:
            return None
        return self._wait(pending)

    def query_async(self, *, sname: str = "", sip: str = "", callback: Callback) -> None:
        """Like query(), but calls `callback(result)`, or `callback(None)` on failure/timeout.

        The timeout of an async query is enforced by expire().
        """
        key, request = _request(sname, sip)
        pending, is_new = self._join(key, request, callback)
        if pending is None:
            log.warning("table query refused: too many pending", key=key)
            _call(callback, None, key)
        elif is_new:
            try:
                self._send(pending)
            except QueryTimeout as err:
                log.warning("table query not sent", key=key, error=str(err.__cause__))

    def query_until_answered(
        self, *, sname: str = "", sip: str = "", wanted: Callable[[], bool] = lambda: True
    ) -> None:
        """Ask, and after every timeout ask again (backoff up to RETRY_MAX_SECONDS) until
        an answer arrives or `wanted()` turns false. Asking again for the same key while
        one is being retried changes nothing."""
        key, _ = _request(sname, sip)
        with self._lock:
            if key in self._persistent:
                return
            self._persistent[key] = _Persistent(sname, sip, wanted, self._clock())
        self._ask_persistent(key)

    def _ask_persistent(self, key: str) -> None:
        with self._lock:
            entry = self._persistent.get(key)
            if entry is None:
                return
            entry.next_query = float("inf")  # asked; `done` schedules the next time

        def done(result: TableQueryResult | None) -> None:
            wanted = result is None and _still_wanted(entry, key)  # outside our lock
            with self._lock:
                if self._persistent.get(key) is not entry:
                    return
                if not wanted:
                    del self._persistent[key]
                    return
                entry.next_query = self._clock() + entry.interval
                delay, entry.interval = entry.interval, min(entry.interval * 2, RETRY_MAX_SECONDS)
            log.info("table query unanswered, will ask again", key=key, seconds=delay)

        self.query_async(sname=entry.sname, sip=entry.sip, callback=done)

    def retry(self, now: float | None = None) -> int:
        """Send again every unanswered request whose backoff elapsed, and start the
        persistent queries that are due; returns how many requests went out."""
        now = self._clock() if now is None else now
        with self._lock:
            due = [p for p in self._pending.values() if p.next_send <= now < p.deadline]
            for pending in due:
                pending.interval = min(pending.interval * 2, RETRY_MAX_SECONDS)
                pending.next_send = now + pending.interval
            asks = [key for key, entry in self._persistent.items() if entry.next_query <= now]
        for pending in due:
            self._resend(pending)
        for key in asks:
            self._ask_persistent(key)
        return len(due) + len(asks)

    def resend_pending(self) -> int:
        """Send every pending request again now (the result subscription just became live:
        an answer may have been lost meanwhile); returns how many."""
        now = self._clock()
        with self._lock:
            pendings = list(self._pending.values())
            for pending in pendings:
                pending.interval = RETRY_FIRST_SECONDS
                pending.next_send = now + pending.interval
        for pending in pendings:
            self._resend(pending)
        return len(pendings)

    def on_result(self, result: TableQueryResult) -> int:
        """Resolve every pending query this result answers; returns how many keys it resolved."""
        if not self._pending and not self._persistent:
            return 0
        keys = _result_keys(result)
        with self._lock:
            matched = [self._pending[key] for key in keys if key in self._pending]
            for key in keys:
                self._persistent.pop(key, None)
        return sum(self._finish(pending, result) for pending in matched)

    def expire(self, now: float | None = None) -> int:
        """Time out every query past its deadline (callbacks get None); returns how many keys."""
        now = self._clock() if now is None else now
        with self._lock:
            overdue = [pending for pending in self._pending.values() if pending.deadline <= now]
        return sum(self._finish(pending, None) for pending in overdue)

    def pending_keys(self) -> list[str]:
        with self._lock:
            return sorted(self._pending)

    def persistent_keys(self) -> list[str]:
        """Keys asked until answered that have no answer yet."""
        with self._lock:
            return sorted(self._persistent)

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        """For status output: key -> {"queries": joined so far, "seconds_left": to deadline}."""
        now = self._clock()
        with self._lock:
            return {
                key: {"queries": pending.waiters, "seconds_left": pending.deadline - now}
                for key, pending in sorted(self._pending.items())
            }

    # ------------------------------------------------------------------ internals

    def _join(
        self, key: str, request: TableQueryRequest, callback: Callback | None
    ) -> tuple[_Pending | None, bool]:
        """The pending query for `key` (new: True) with `callback` added; (None, False) if full."""
        with self._lock:
            pending = self._pending.get(key)
            is_new = pending is None
            if pending is None:
                if len(self._pending) >= self._max_pending:
                    return None, False
                now = self._clock()
                pending = _Pending(key, now + self.timeout, request, now + RETRY_FIRST_SECONDS)
                self._pending[key] = pending
            if callback is not None:
                pending.callbacks.append(callback)
            pending.waiters += 1
            return pending, is_new

    def _send(self, pending: _Pending) -> None:
        try:
            self._publish(pending.request)
        except Exception as err:
            self._finish(pending, None)
            raise QueryTimeout(f"table query {pending.key!r} could not be sent: {err}") from err

    def _resend(self, pending: _Pending) -> None:
        """A later attempt: a failure here leaves the query to its deadline."""
        if pending.finished:
            return
        try:
            self._publish(pending.request)
        except Exception as err:  # noqa: BLE001 - the next attempt or the deadline decides
            log.warning("table query not sent again", key=pending.key, error=str(err))

    def _wait(self, pending: _Pending) -> TableQueryResult:
        while not pending.done.is_set():
            remaining = pending.deadline - self._clock()
            if remaining <= 0:
                self._finish(pending, None)
                break
            pending.done.wait(remaining)
        if pending.result is None:
            raise QueryTimeout(
                f"no answer to table query {pending.key!r} within {self.timeout:g} s"
            )
        return pending.result

    def _finish(self, pending: _Pending, result: TableQueryResult | None) -> bool:
        """Resolve `pending` once (later calls return False) and run its callbacks."""
        with self._lock:
            if pending.finished:
                return False
            pending.finished = True
            pending.result = result
            if self._pending.get(pending.key) is pending:
                del self._pending[pending.key]
            callbacks, pending.callbacks = pending.callbacks, []
        pending.done.set()
        if result is None:
            log.info("table query gave no answer", key=pending.key)
        for callback in callbacks:
            _call(callback, result, pending.key)
        return True


def _request(sname: str, sip: str) -> tuple[str, TableQueryRequest]:
    """The correlation key and the request for a query; ValueError if malformed."""
    if not isinstance(sname, str) or not isinstance(sip, str):
        raise ValueError(f"table query needs string sname/sip, got {sname!r}, {sip!r}")
    if sname:
        try:
            parse_job_name(sname)
        except InvalidName as err:
            raise ValueError(f"table query by name: {err}") from None
    if sip:
        address = canonical_ip(sip)
        if address is None:
            raise ValueError(f"table query by IP: {sip!r} is not an IP address")
        return address, TableQueryRequest(sname=sname, sip=address)
    if not sname:
        raise ValueError("table query needs a job name (sname) or a service IP (sip)")
    return sname, TableQueryRequest(sname=sname, sip="")


def _result_keys(result: TableQueryResult) -> set[str]:
    """Every key a result answers: app_name, query_key and each service address, canonical."""
    addresses = {result.query_key}
    for instance in result.instance_list:
        for sip in instance.service_ip:
            addresses.update((sip.address, sip.address_v6))
    keys = {result.query_key}
    if result.app_name:
        keys.add(result.app_name)
    keys.update(canonical_ip(address) or address for address in addresses if address)
    return keys


def _still_wanted(entry: _Persistent, key: str) -> bool:
    try:
        return bool(entry.wanted())
    except Exception:
        log.exception("table query: cannot tell whether still wanted; asking again", key=key)
        return True


def _call(callback: Callback, result: TableQueryResult | None, key: str) -> None:
    try:
        callback(result)
    except Exception:
        log.exception("table query callback failed", key=key)
