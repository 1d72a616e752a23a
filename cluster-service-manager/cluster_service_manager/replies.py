"""What the cluster service manager publishes to nodes (reference §3), in one place.

Subnet answers on `nodes/<id>/net/subnetwork/result`, table query answers on
`nodes/<id>/net/tablequery/result`, and `{"type": ...}` on
`jobs/<job_name>/updates_available` after every change of a job. All QoS 1, not
retained; `publish` is the MQTT client's (it queues while the broker is away).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oakestra_net import topics
from oakestra_net.log import get_logger
from oakestra_net.messages import SubnetResult, UpdatesAvailable

from . import jobs

log = get_logger(__name__)

Publish = Callable[[str, Any], None]


class Replies:
    def __init__(self, publish: Publish) -> None:
        self._publish = publish

    def subnet(self, node_id: str, subnet: tuple[str, str]) -> None:
        answer = SubnetResult(address=subnet[0], addressv6=subnet[1])
        self._publish(topics.node_topic(node_id, topics.SUBNET_RESULT), answer)
        log.info("subnet sent", node_id=node_id, subnet=subnet[0], subnet_v6=subnet[1])

    def table(self, node_id: str, job: jobs.Job | None, query_key: str) -> None:
        answer = jobs.table_result(job, query_key)
        self._publish(topics.node_topic(node_id, topics.TABLEQUERY_RESULT), answer)
        log.debug(
            "table query answered",
            node_id=node_id,
            query_key=query_key,
            job_name=answer.app_name,
            instances=len(answer.instance_list),
        )

    def job_update(self, job_name: str, kind: str) -> None:
        self._publish(topics.job_updates_topic(job_name), UpdatesAvailable(type=kind))
        log.info("job update published", job_name=job_name, type=kind)
