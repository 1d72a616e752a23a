"""The node's MQTT session with its cluster service manager.

Moves typed messages between the node daemon and the broker: the subnet request
and its answer, table queries and their results, `jobs/<job>/updates_available`
for every job the node follows, and the node's own reports. Client id = node id.
What the messages mean is the daemon's business.

A table query is published only while the broker has acknowledged the subscription to
`tablequery/result` on the current connection. paho sends a publish made between the
TCP connect and the CONNACK before the SUBSCRIBE it sends on CONNACK, so a quick
cluster answered a query before the node was subscribed and the answer was lost
(restarts with live containers, about one in fifteen). A query made while the
subscription is not live is not sent; `on_ready` (called after every SUBACK of that
subscription, on its own thread) lets the daemon send every pending query then.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from oakestra_net import topics
from oakestra_net.log import RateLimitedLog, get_logger
from oakestra_net.messages import (
    InvalidMessage,
    Message,
    SubnetRequest,
    SubnetResult,
    TableQueryRequest,
    TableQueryResult,
)
from oakestra_net.mqtt import MqttClient, MqttConfig

log = get_logger(__name__)

SUBNET_RETRY_SECONDS = 2.0
SUBACK_WAIT_SECONDS = 10.0
JOB_UPDATES = "jobs/+/updates_available"


def _ONE_LANE(_topic: str) -> str:  # noqa: N802 - a constant order key
    return "cluster"


class NodeSession:
    def __init__(
        self,
        config: MqttConfig,
        node_id: str,
        *,
        on_table_result: Callable[[TableQueryResult], None],
        on_job_update: Callable[[str], None],
        on_ready: Callable[[], None] | None = None,
        client_factory: Callable[[MqttConfig], MqttClient] = MqttClient,
    ) -> None:
        self.node_id = node_id
        self.client = client_factory(config)
        self._on_table_result = on_table_result
        self._on_job_update = on_job_update
        self._on_ready = on_ready
        self._result_topic = self._topic(topics.TABLEQUERY_RESULT)
        self._deferred = 0  # queries not sent: the result subscription was not live yet
        self._instances_rejected = 0  # bad instances left out of otherwise good answers
        self._rejections = RateLimitedLog(log)
        self._subnet: SubnetResult | None = None
        self._subnet_arrived = threading.Event()
        self._followed: set[str] = set()
        self.client.subscribe(self._topic(topics.SUBNET_RESULT), self._subnet_result)
        # Table results and job updates share one order key, so they are handled in the
        # order the cluster sent them. Updates come through one wildcard subscription,
        # live since registration: following a job takes effect at once, and no update
        # published just after a table answer can slip past a not-yet-acknowledged
        # per-job subscription.
        self.client.subscribe(self._result_topic, self._table_result, order_key=_ONE_LANE)
        self.client.subscribe(JOB_UPDATES, self._job_update, order_key=_ONE_LANE)
        self.client.add_connect_listener(self._connected)

    def _topic(self, kind: str) -> str:
        return topics.node_topic(self.node_id, kind)

    def start(self) -> None:
        self.client.start()

    def stop(self) -> None:
        self.client.stop()

    @property
    def connected(self) -> bool:
        return self.client.connected

    @property
    def ready(self) -> bool:
        """Whether a table answer published now would reach us (subscription acknowledged)."""
        return self.client.wait_subscribed(self._result_topic, 0)

    def stats(self) -> dict[str, int]:
        return {
            **self.client.stats(),
            "queries_deferred": self._deferred,
            "table_instances_rejected": self._instances_rejected,
        }

    def publish(self, kind: str, message: Message) -> None:
        self.client.publish(self._topic(kind), message)

    def request_subnet(self, timeout: float) -> SubnetResult | None:
        """Ask the cluster for this node's subnet; None when no answer came in time.

        The first request goes out once its answer can reach us (subscription
        acknowledged); without an answer it is repeated every SUBNET_RETRY_SECONDS.
        """
        self._subnet_arrived.clear()
        deadline = time.monotonic() + timeout
        self.client.wait_subscribed(self._topic(topics.SUBNET_RESULT), timeout)
        while (left := deadline - time.monotonic()) > 0:
            self.publish(topics.SUBNET, SubnetRequest(method="GET"))
            if self._subnet_arrived.wait(min(SUBNET_RETRY_SECONDS, left)):
                return self._subnet
        return None

    def query(self, request: TableQueryRequest) -> None:
        """Publish a table query, unless its answer could not reach us yet (then on_ready
        tells the daemon to send its pending queries)."""
        if not self.ready:
            self._deferred += 1
            log.debug("table query deferred until subscribed", sname=request.sname, sip=request.sip)
            return
        self.publish(topics.TABLEQUERY_REQUEST, request)

    def _connected(self) -> None:
        """After each (re)connect: once the result subscription is live, tell the daemon."""
        if not self.client.wait_subscribed(self._result_topic, SUBACK_WAIT_SECONDS):
            log.warning("table result subscription not acknowledged", topic=self._result_topic)
            return
        if self._on_ready is not None:
            self._on_ready()

    def follow_job(self, job_name: str) -> None:
        self._followed.add(job_name)

    def unfollow_job(self, job_name: str) -> None:
        self._followed.discard(job_name)

    def _subnet_result(self, topic: str, payload: bytes) -> None:
        try:
            self._subnet = SubnetResult.from_json(payload)
        except InvalidMessage as err:
            log.warning("invalid subnet answer dropped", topic=topic, reason=str(err))
            return
        self._subnet_arrived.set()

    def _table_result(self, topic: str, payload: bytes) -> None:
        try:
            result = TableQueryResult.from_json(payload)
        except InvalidMessage as err:
            log.warning("invalid table query result dropped", topic=topic, reason=str(err))
            return
        if result.rejected:
            self._instances_rejected += result.rejected
            self._rejections.warning(
                "table instance",
                "invalid instances left out of a table answer",
                job_name=result.app_name,
                rejected=result.rejected,
                reasons=list(result.rejections),
            )
        self._on_table_result(result)

    def _job_update(self, topic: str, _payload: bytes) -> None:
        job_name = topics.parse_job_updates_topic(topic)
        if job_name in self._followed:
            self._on_job_update(job_name)
