"""The nodes' side of the broker: subscriptions to the node requests, to handler calls.

One subscription (QoS 1) per kind of message a node sends (`nodes/+/net/subnet`,
`nodes/+/net/tablequery/request`, ...), each under `$share/cluster-sm/` when several
processes serve one cluster. Not `nodes/+/net/#`: that would bring back every answer
this service publishes itself, one delivery per answer for nothing. The MQTT wrapper
runs handlers on its worker pool with the node id as order key: one node's messages
are handled in order, different nodes in parallel. Every message is parsed into its
dataclass here; an invalid one is counted, logged (topic, reason, start of the
payload) and dropped; the log lines are rate-limited per topic kind, so a junk flood
writes a few lines and a summary. Topics repeat (a few kinds per node), so each one is
parsed and checked once and remembered (`TopicCache`), and so is each table query
payload (`QueryCache`): nodes repeat their queries byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable

from oakestra_net import topics
from oakestra_net.log import RateLimitedLog, get_logger
from oakestra_net.messages import InvalidMessage, Message
from oakestra_net.mqtt import MqttClient, payload_preview

from .handlers import Handlers
from .metrics import Metrics

log = get_logger(__name__)

OWN_RESULTS = frozenset({topics.SUBNET_RESULT, topics.TABLEQUERY_RESULT})
REQUEST_KINDS = (
    topics.SUBNET,
    topics.TABLEQUERY_REQUEST,
    topics.SERVICE_DEPLOYED,
    topics.SERVICE_UNDEPLOYED,
    topics.ADDRESS_CHANGED,
    topics.INTEREST_REMOVE,
)
SHARED_PREFIX = "$share/cluster-sm/"
MAX_CACHED_TOPICS = 50_000
MAX_CACHED_QUERIES = 50_000
MAX_CACHED_QUERY_BYTES = 1024


class TopicCache:
    """`topics.parse_node_topic`, remembered per topic (bounded: emptied when full)."""

    def __init__(self, size: int = MAX_CACHED_TOPICS) -> None:
        self.size = size
        self._parsed: dict[str, topics.NodeTopic | None] = {}

    def parse(self, topic: str) -> topics.NodeTopic | None:
        try:
            return self._parsed[topic]
        except KeyError:
            pass
        parsed = topics.parse_node_topic(topic)
        if len(self._parsed) >= self.size:
            self._parsed = {}
        self._parsed[topic] = parsed
        return parsed


class QueryCache:
    """Table query payloads, parsed and checked once and remembered (bounded: emptied
    when full). Nodes send the same bytes again for the same name or IP; messages are
    immutable, so one parsed query serves every repetition."""

    def __init__(self, size: int = MAX_CACHED_QUERIES) -> None:
        self.size = size
        self._parsed: dict[bytes, Message] = {}

    def parse(self, message_class: type[Message], payload: bytes) -> Message:
        if type(payload) is not bytes or len(payload) > MAX_CACHED_QUERY_BYTES:
            return message_class.from_json(payload)
        message = self._parsed.get(payload)
        if message is None or type(message) is not message_class:
            message = message_class.from_json(payload)  # InvalidMessage: not remembered
            if len(self._parsed) >= self.size:
                self._parsed = {}
            self._parsed[payload] = message
        return message


def subscriptions(shared: bool) -> tuple[str, ...]:
    """The topic filters the cluster service manager subscribes to."""
    prefix = SHARED_PREFIX if shared else ""
    return tuple(f"{prefix}nodes/+/net/{kind}" for kind in REQUEST_KINDS)


def node_of(topic: str) -> str:
    """The order key of a node topic: its node id (the second level)."""
    parts = topic.split("/", 2)
    return parts[1] if len(parts) > 1 else topic


class MqttEndpoint:
    def __init__(
        self,
        client: MqttClient,
        handlers: Handlers,
        *,
        shared: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.client = client
        self.patterns = subscriptions(shared)
        self.pattern = " ".join(self.patterns)  # for logs
        self.metrics = metrics or Metrics()
        self.rejections = RateLimitedLog(log)
        self._topics = TopicCache()
        self._queries = QueryCache()
        self._handlers: dict[str, Callable[[str, Message], None]] = {
            topics.SUBNET: handlers.subnet,
            topics.TABLEQUERY_REQUEST: handlers.table_query,
            topics.SERVICE_DEPLOYED: handlers.service_deployed,
            topics.SERVICE_UNDEPLOYED: handlers.service_undeployed,
            topics.ADDRESS_CHANGED: handlers.address_changed,
            topics.INTEREST_REMOVE: handlers.interest_remove,
        }

    def start(self) -> None:
        for pattern in self.patterns:
            self.client.subscribe(pattern, self.on_message, order_key=node_of)
        self.client.start()

    def wait_subscribed(self, timeout: float) -> bool:
        """Whether the broker confirmed every subscription within `timeout` seconds."""
        return all(self.client.wait_subscribed(p, timeout) for p in self.patterns)

    def stop(self) -> None:
        self.client.stop()

    @property
    def connected(self) -> bool:
        return self.client.connected

    def on_message(self, topic: str, payload: bytes) -> None:
        parsed = self._topics.parse(topic)
        if parsed is None:
            self.metrics.message("unknown", "invalid")
            self.rejections.warning(
                "unknown topic", "message on an unknown topic dropped", topic=topic[:200]
            )
            return
        if parsed.kind in OWN_RESULTS:
            self.metrics.message(parsed.kind, "ignored")
            return
        try:
            if parsed.kind == topics.TABLEQUERY_REQUEST:
                message = self._queries.parse(parsed.message_class, payload)
            else:
                message = parsed.message_class.from_json(payload)
        except InvalidMessage as err:
            self.metrics.message(parsed.kind, "invalid")
            self.rejections.warning(
                parsed.kind,
                "invalid message dropped",
                topic=topic,
                reason=str(err),
                payload=payload_preview(payload),
            )
            return
        self.metrics.message(parsed.kind, "handled")
        self._handlers[parsed.kind](parsed.node_id, message)
