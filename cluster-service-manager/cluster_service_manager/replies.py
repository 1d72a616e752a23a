"""What the cluster service manager publishes to nodes (reference §3), in one place.

Subnet answers on `nodes/<id>/net/subnetwork/result`, table query answers on
`nodes/<id>/net/tablequery/result`, and `{"type": ...}` on
`jobs/<job_name>/updates_available` after every change of a job. All QoS 1, not
retained; `publish` is the MQTT client's (it queues while the broker is away).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from oakestra_net import topics
from oakestra_net.log import get_logger
from oakestra_net.messages import SubnetResult, UpdatesAvailable

from . import jobs

log = get_logger(__name__)

Publish = Callable[[str, Any], None]
MAX_REMEMBERED_TABLES = 8192


class Replies:
    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._tables = TableAnswers()
        self._table_topics: dict[str, str] = {}

    def _table_topic(self, node_id: str) -> str:
        """The node's `tablequery/result` topic, checked and built once per node."""
        topic = self._table_topics.get(node_id)
        if topic is None:
            topic = topics.node_topic(node_id, topics.TABLEQUERY_RESULT)
            if len(self._table_topics) >= MAX_REMEMBERED_TABLES:
                self._table_topics = {}
            self._table_topics[node_id] = topic
        return topic

    def subnet(self, node_id: str, subnet: tuple[str, str]) -> None:
        answer = SubnetResult(address=subnet[0], addressv6=subnet[1])
        self._publish(topics.node_topic(node_id, topics.SUBNET_RESULT), answer)
        log.info("subnet sent", node_id=node_id, subnet=subnet[0], subnet_v6=subnet[1])

    def table(self, node_id: str, job: jobs.Job | None, query_key: str) -> None:
        if job is None:
            answer: str = jobs.table_result(None, query_key).to_json()
        else:
            answer = self._tables.answer(job, query_key)
        self._publish(self._table_topic(node_id), answer)
        log.debug(
            "table query answered",
            node_id=node_id,
            query_key=query_key,
            job_name=job and job.job_name,
        )

    def job_update(self, job_name: str, kind: str) -> None:
        self._publish(topics.job_updates_topic(job_name), UpdatesAvailable(type=kind))
        log.info("job update published", job_name=job_name, type=kind)


class TableAnswers:
    """`TableQueryResult.to_json()` of a job, its instance list encoded once per job object.

    Jobs are immutable and the embedded store's memory hands out the same object until
    the job changes, so a node asking again costs one string join instead of building
    and encoding the answer (a tenth of a cached query's CPU). Bounded: emptied when full;
    entries hold their job, so an `id` is never reused while remembered.
    """

    def __init__(self, size: int = MAX_REMEMBERED_TABLES) -> None:
        self.size = size
        self._encoded: dict[int, tuple[jobs.Job, str, str]] = {}

    def answer(self, job: jobs.Job, query_key: str) -> str:
        entry = self._encoded.get(id(job))
        if entry is None or entry[0] is not job:
            whole = job.table_result(query_key).to_json()
            # the same text is the key's encoding between the two fixed parts
            head = '{"app_name":' + json.dumps(job.job_name) + ',"query_key":'
            key = json.dumps(query_key)
            if not whole.startswith(head + key):
                return whole  # not the layout expected: never cached
            tail = whole[len(head) + len(key) :]
            if len(self._encoded) >= self.size:
                self._encoded = {}
            self._encoded[id(job)] = (job, head, tail)
            return whole
        return entry[1] + json.dumps(query_key) + entry[2]
