"""The one MQTT client of the project: a paho-mqtt 2.x wrapper (the only module importing paho).

`MqttClient` keeps a registry of subscriptions and resubscribes all of them (QoS 1) on
every connect, so a broker restart needs nothing from its users. paho's network thread
only hands messages off: handlers run on a small pool of worker threads, messages with
the same order key (default: the topic) on the same worker, in arrival order. The
hand-off is the hot path of every service (one per message): which subscriptions a
topic matches, and the worker each goes to, are worked out once per topic and
remembered until the subscriptions change; the worker queues are C `SimpleQueue`s,
bounded by counters each written by one thread only. A raising
handler is logged and counted, never stops delivery. Nothing in the component publishes
retained messages, so a retained message a subscription brings up is someone else's
(possibly a poisoned result left before a node registered): it is dropped, logged and
counted unless the subscription asks for them. Topic names and message schemas belong to
other modules; this one moves bytes.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from oakestra_net.log import get_logger

log = get_logger(__name__)

Handler = Callable[[str, bytes], None]
OrderKey = Callable[[str], Hashable]
MAX_QUEUED_PUBLISHES = 10000
# QoS 1 publishes in flight (sent, PUBACK not yet back): 0 = no limit (MAX_QUEUED_PUBLISHES
# still bounds them). paho's default of 20 made answers wait for acknowledgements of
# earlier ones under load, and with any limit paho walks every unacknowledged message
# on each PUBACK (to find queued ones to send), which grows with the backlog.
MAX_INFLIGHT_PUBLISHES = 0
MAX_ROUTES = 20000  # topics whose matching subscriptions are remembered
PAYLOAD_PREVIEW_CHARS = 200
_STOP = object()
_COUNTERS = (
    "published",
    "handler_errors",
    "dropped",
    "reconnects",
    "retained_ignored",
)


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: str | None = None
    keepalive: int = 30
    min_reconnect_delay: float = 1
    max_reconnect_delay: float = 30

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip("[] "):
            raise ValueError(f"mqtt broker host {self.host!r} is empty")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"mqtt broker port {self.port!r} is not an integer")
        if not 0 < self.port < 65536:
            raise ValueError(f"mqtt broker port {self.port} is out of range 1-65535")
        if not isinstance(self.client_id, str):
            raise ValueError(f"mqtt client id {self.client_id!r} is not a string")
        if self.keepalive <= 0:
            raise ValueError(f"mqtt keepalive {self.keepalive} must be positive")
        if not 0 < self.min_reconnect_delay <= self.max_reconnect_delay:
            raise ValueError(
                f"mqtt reconnect delays {self.min_reconnect_delay}..{self.max_reconnect_delay}"
                " must be positive and increasing"
            )
        if self.key_file and not self.cert_file:
            raise ValueError(f"mqtt key_file {self.key_file} given without cert_file")

    @property
    def broker(self) -> str:
        return f"{self.host}:{self.port}"


def subscription_filter(pattern: str) -> str:
    """The topic filter of a subscription pattern (`$share/group/a/+` -> `a/+`)."""
    if pattern.startswith("$share/"):
        return pattern.split("/", 2)[2] if pattern.count("/") >= 2 else ""
    return pattern


def check_pattern(pattern: str) -> None:
    """Raise ValueError unless `pattern` is a valid MQTT filter or `$share/<group>/<filter>`."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"mqtt subscription {pattern!r} is empty")
    if pattern.startswith("$share/"):
        group = pattern.split("/")[1]
        if not group or "+" in group or "#" in group or not subscription_filter(pattern):
            raise ValueError(f"mqtt shared subscription {pattern!r} is not $share/<group>/<filter>")
    levels = subscription_filter(pattern).split("/")
    for index, level in enumerate(levels):
        if ("#" in level and (level != "#" or index != len(levels) - 1)) or (
            "+" in level and level != "+"
        ):
            raise ValueError(f"mqtt subscription {pattern!r} has a misplaced wildcard")
    if "\0" in pattern:
        raise ValueError(f"mqtt subscription {pattern!r} contains NUL")


def check_topic(topic: str) -> None:
    """Raise ValueError unless `topic` is a topic one can publish to."""
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"mqtt topic {topic!r} is empty")
    if "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"mqtt topic {topic!r} contains a wildcard or NUL")
    if len(topic.encode()) > 65535:
        raise ValueError(f"mqtt topic {topic[:40]!r}... is longer than 65535 bytes")


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether `topic` matches the subscription `pattern` (MQTT 3.1.1 rules, $share aware)."""
    levels = subscription_filter(pattern).split("/")
    parts = topic.split("/")
    if topic.startswith("$") and levels[0] in ("+", "#"):
        return False
    for index, level in enumerate(levels):
        if level == "#":
            return True
        if index >= len(parts) or level not in ("+", parts[index]):
            return False
    return len(parts) == len(levels)


def payload_bytes(payload: Any, topic: str) -> bytes:
    """Bytes to publish: str (UTF-8), bytes, or an object with `to_json()`."""
    if hasattr(payload, "to_json"):
        payload = payload.to_json()
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    raise TypeError(
        f"mqtt payload for {topic} is {type(payload).__name__}, not str, bytes or to_json()"
    )


def payload_preview(payload: bytes) -> str:
    text = payload.decode("utf-8", errors="replace")
    if len(text) <= PAYLOAD_PREVIEW_CHARS:
        return text
    return text[: PAYLOAD_PREVIEW_CHARS - 3] + "..."


def _paho_logger() -> logging.Logger:
    """paho's own log; without its ERROR for every loop pass while disconnected (we log that)."""
    logger = logging.getLogger(f"{__name__}.paho")
    if not logger.filters:
        logger.addFilter(lambda record: not record.msg.startswith("Client is not connected"))
    return logger


@dataclass(frozen=True)
class _Subscription:
    pattern: str
    handler: Handler
    order_key: OrderKey | None
    accept_retained: bool = False


# A topic's deliveries: (subscription, worker index) for every subscription it matches.
_Route = tuple[tuple[_Subscription, int], ...]


class MqttClient:
    """A resilient MQTT session: remembered subscriptions, worker-pool handlers, counters."""

    def __init__(
        self, config: MqttConfig, *, workers: int = 4, name: str = "mqtt", queue_size: int = 10000
    ) -> None:
        if workers < 1 or queue_size < 1:
            raise ValueError(f"mqtt client {name}: workers and queue_size must be >= 1")
        self.config = config
        self.name = name
        self._log = log.bind(client=name)
        self._subs: dict[str, _Subscription] = {}
        self._routes: dict[str, _Route] = {}  # replaced (not mutated) when _subs change
        self._pending_subacks: dict[int, str] = {}
        self._acked: set[str] = set()
        self._session_up = False  # guarded by _subs_lock: resubscribed on this connection
        self._subs_lock = threading.Condition()
        self._queue_size = queue_size
        self._queues: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(workers)]
        # backlog of worker i = _enqueued[i] - _taken[i]; the first written only by
        # paho's network thread, the second only by worker i, so no lock is needed
        self._enqueued = [0] * workers
        self._taken = [0] * workers
        self._received = 0  # written only by paho's network thread
        self._threads: list[threading.Thread] = []
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._listeners: list[Callable[[], None]] = []
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._counter_lock = threading.Lock()
        self._connected = threading.Event()
        self._ever_connected = False
        self._unreachable_logged = False
        self._last_drop_log = 0.0
        self._last_retained_log = 0.0
        self._state = "new"
        self._client = self._make_client()

    def _make_client(self) -> paho.Client:
        cfg = self.config
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            clean_session=True,
            protocol=paho.MQTTv311,
        )
        client.max_queued_messages_set(MAX_QUEUED_PUBLISHES)
        client.max_inflight_messages_set(MAX_INFLIGHT_PUBLISHES)
        client.reconnect_delay_set(cfg.min_reconnect_delay, cfg.max_reconnect_delay)
        client.suppress_exceptions = True
        client.enable_logger(_paho_logger())
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.ca_file or cfg.cert_file:
            self._set_tls(client)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = _no_delay
        return client

    def _set_tls(self, client: paho.Client) -> None:
        cfg = self.config
        for kind, path in (("ca_file", cfg.ca_file), ("cert_file", cfg.cert_file)):
            if path and not os.path.isfile(path):
                raise ValueError(f"mqtt client {self.name}: {kind} {path} does not exist")
        try:
            client.tls_set(
                ca_certs=cfg.ca_file,
                certfile=cfg.cert_file,
                keyfile=cfg.key_file,
                keyfile_password=cfg.key_password,
            )
        except (OSError, ValueError) as err:
            raise ValueError(f"mqtt client {self.name}: TLS configuration invalid: {err}") from err

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background; an unreachable broker is retried with backoff."""
        if self._state != "new":
            raise RuntimeError(f"mqtt client {self.name} was already started")
        self._state = "running"
        for index in range(len(self._queues)):
            self._spawn(f"{self.name}-worker-{index}", self._work, index)
        self._spawn(f"{self.name}-events", self._run_connect_events)
        cfg = self.config
        self._client.connect_async(cfg.host.strip("[]"), cfg.port, cfg.keepalive)
        self._client.loop_start()
        self._log.info("mqtt connecting", broker=cfg.broker, client_id=cfg.client_id)

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect, stop the network loop, let workers finish queued work (bounded wait)."""
        if self._state == "stopped":
            return
        was_running = self._state == "running"
        self._state = "stopped"
        if not was_running:
            return
        deadline = time.monotonic() + timeout
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._events.put(_STOP)
        for jobs in self._queues:
            jobs.put(_STOP)  # behind the work already queued
        for thread in self._threads:
            if thread is not threading.current_thread():  # stop() called from a handler
                thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [
            t.name for t in self._threads if t.is_alive() and t is not threading.current_thread()
        ]
        if stuck:
            self._log.warning("mqtt workers still busy after stop", threads=",".join(stuck))
        self._log.info("mqtt stopped", broker=self.config.broker)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_subscribed(self, pattern: str, timeout: float) -> bool:
        """Whether the broker acknowledged `pattern` on the current connection within `timeout`."""
        with self._subs_lock:
            return self._subs_lock.wait_for(lambda: pattern in self._acked, timeout)

    def stats(self) -> dict[str, int]:
        with self._counter_lock:
            return {**self._counters, "received": self._received}

    def _count(self, counter: str, amount: int = 1) -> None:
        with self._counter_lock:
            self._counters[counter] += amount

    # -- subscriptions and publishing --------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        handler: Handler,
        *,
        order_key: OrderKey | None = None,
        accept_retained: bool = False,
    ) -> None:
        """Handle messages matching `pattern` from now on and after every reconnect.

        One handler per pattern: subscribing the same pattern again replaces its handler.
        Retained messages are ignored unless `accept_retained`.
        """
        check_pattern(pattern)
        if not callable(handler):
            raise TypeError(f"mqtt handler for {pattern} is not callable")
        with self._subs_lock:
            self._subs[pattern] = _Subscription(pattern, handler, order_key, accept_retained)
            self._routes = {}
            if self._session_up:
                self._send_subscribe(pattern)

    def unsubscribe(self, pattern: str) -> None:
        """Stop handling `pattern`; unknown patterns are ignored."""
        with self._subs_lock:
            if self._subs.pop(pattern, None) is None:
                return
            self._routes = {}
            self._acked.discard(pattern)
            if self._session_up:
                self._client.unsubscribe(pattern)

    def _send_subscribe(self, pattern: str) -> None:
        # Caller holds _subs_lock, so the SUBACK callback finds the mid recorded.
        self._acked.discard(pattern)
        result, mid = self._client.subscribe(pattern, qos=1)
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_subacks[mid] = pattern

    def publish(self, topic: str, payload: Any, *, qos: int = 1) -> None:
        """Queue `payload` for `topic` (not retained); never blocks, never waits for the broker.

        While disconnected, QoS 1/2 messages wait in a bounded queue (dropped when full);
        QoS 0 messages are dropped.
        """
        check_topic(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"mqtt qos {qos!r} for {topic} is not 0, 1 or 2")
        data = payload_bytes(payload, topic)
        if self._state == "stopped":
            self._drop("mqtt publish after stop dropped", topic=topic)
            return
        result = self._client.publish(topic, data, qos=qos, retain=False).rc
        if result == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self._drop("mqtt publish queue full, message dropped", topic=topic)
        elif result == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            self._drop("mqtt not connected, qos 0 message dropped", topic=topic)
        else:
            self._count("published")

    def add_connect_listener(self, fn: Callable[[], None]) -> None:
        """Call `fn()` on an event thread after every successful (re)connect and resubscribe."""
        self._listeners.append(fn)

    # -- paho callbacks (network thread: hand off, never raise) --------------------------

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        try:
            if reason_code.is_failure:
                self._log.warning(
                    "mqtt connection refused", broker=self.config.broker, reason=str(reason_code)
                )
                return
            with self._subs_lock:
                self._pending_subacks.clear()
                self._acked.clear()
                self._session_up = True
                for pattern in self._subs:
                    self._send_subscribe(pattern)
            if self._ever_connected:
                self._count("reconnects")
            self._ever_connected = True
            self._unreachable_logged = False
            self._connected.set()
            self._log.info("mqtt connected", broker=self.config.broker)
            self._events.put("connected")
        except Exception:
            self._log.exception("mqtt on_connect failed", broker=self.config.broker)

    def _on_connect_fail(self, _client, _userdata) -> None:
        if not self._unreachable_logged:
            self._unreachable_logged = True
            self._log.warning("mqtt broker unreachable, retrying", broker=self.config.broker)

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        with self._subs_lock:
            self._session_up = False
            self._acked.clear()
        if was_connected and self._state == "running":
            self._log.warning(
                "mqtt disconnected", broker=self.config.broker, reason=str(reason_code)
            )

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _properties) -> None:
        with self._subs_lock:
            pattern = self._pending_subacks.pop(mid, None)
            if pattern is None or pattern not in self._subs:
                return
            if any(code.is_failure for code in reason_codes):
                self._log.warning("mqtt subscription refused by broker", pattern=pattern)
                return
            self._acked.add(pattern)
            self._subs_lock.notify_all()

    def _on_message(self, _client, _userdata, message) -> None:
        try:
            self._received += 1
            topic = message.topic
            route = self._routes.get(topic)
            if route is None:
                route = self._route(topic)
            if message.retain:
                accepting = tuple(r for r in route if r[0].accept_retained)
                if len(accepting) < len(route):
                    self._ignore_retained(topic)
                route = accepting
            payload = message.payload
            for subscription, index in route:
                if self._enqueued[index] - self._taken[index] >= self._queue_size:
                    self._drop("mqtt handler queue full, message dropped", topic=topic)
                    continue
                self._enqueued[index] += 1
                self._queues[index].put((subscription, topic, payload))
        except Exception:
            self._log.exception("mqtt message dispatch failed", payload=repr(message.payload[:80]))

    def _route(self, topic: str) -> _Route:
        """The subscriptions `topic` matches, each with its worker; remembered per topic.

        Not remembered when an order key failed (it is counted again next time).
        """
        with self._subs_lock:
            route = []
            remember = True
            for subscription in self._subs.values():
                if not topic_matches(subscription.pattern, topic):
                    continue
                key: Hashable = topic
                if subscription.order_key is not None:
                    try:
                        key = subscription.order_key(topic)
                    except Exception:
                        remember = False
                        self._count("handler_errors")
                        self._log.exception("mqtt order key failed", topic=topic)
                route.append((subscription, hash(key) % len(self._queues)))
            found = tuple(route)
            if remember:
                if len(self._routes) >= MAX_ROUTES:
                    self._routes = {}
                self._routes[topic] = found
            return found

    def _ignore_retained(self, topic: str) -> None:
        self._count("retained_ignored")
        now = time.monotonic()
        if now - self._last_retained_log >= 1.0:
            self._last_retained_log = now
            self._log.warning(
                "retained message ignored (nothing of ours publishes retained)",
                topic=topic[:200],
                ignored_total=self.stats()["retained_ignored"],
            )

    def _drop(self, event: str, **fields: Any) -> None:
        self._count("dropped")
        now = time.monotonic()
        if now - self._last_drop_log >= 1.0:
            self._last_drop_log = now
            self._log.warning(event, dropped_total=self.stats()["dropped"], **fields)

    # -- worker threads ------------------------------------------------------------------

    def _work(self, index: int) -> None:
        jobs, taken = self._queues[index], self._taken
        while (job := jobs.get()) is not _STOP:
            taken[index] += 1
            subscription, topic, payload = job
            try:
                subscription.handler(topic, payload)
            except Exception:
                self._count("handler_errors")
                self._log.exception(
                    "mqtt handler failed",
                    topic=topic,
                    pattern=subscription.pattern,
                    payload=payload_preview(payload),
                )

    def _run_connect_events(self) -> None:
        while self._events.get() is not _STOP:
            for listener in list(self._listeners):
                try:
                    listener()
                except Exception:
                    self._count("handler_errors")
                    self._log.exception("mqtt connect listener failed", listener=repr(listener))


def _no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """Small messages go out at once: Nagle's algorithm added ~40 ms per MQTT hop."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (e.g. a websocket wrapper)
        pass
