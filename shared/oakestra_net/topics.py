"""MQTT topic names of the component: building them, checking the ids in them, parsing them.

Node topics are `nodes/<node_id>/net/<kind>`: a worker publishes its
requests and reports there and the cluster service manager answers there; job updates
go to `jobs/<job_name>/updates_available`, where the job name may also be a service IP
string (upstream workers subscribe that way). This module also says which message class
travels on each node topic kind; payload validation is `oakestra_net.messages`' job and
the connection is the MQTT wrapper's. Parsing never raises: a topic that is not ours is
None. The cluster service manager also receives the kinds it publishes itself
(`subnetwork/result`, `tablequery/result`) through its wildcard subscription; skipping
them is its decision.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass

from oakestra_net.messages import (
    AddressChanged,
    InterestRemove,
    Message,
    ServiceDeployed,
    ServiceUndeployed,
    SubnetRequest,
    SubnetResult,
    TableQueryRequest,
    TableQueryResult,
)

SUBNET = "subnet"
SUBNET_RESULT = "subnetwork/result"
TABLEQUERY_REQUEST = "tablequery/request"
TABLEQUERY_RESULT = "tablequery/result"
SERVICE_DEPLOYED = "service/deployed"
SERVICE_UNDEPLOYED = "service/undeployed"
ADDRESS_CHANGED = "service/address-changed"
INTEREST_REMOVE = "interest/remove"

CLUSTER_SUBSCRIPTION = "nodes/+/net/#"
SHARED_CLUSTER_SUBSCRIPTION = "$share/cluster-sm/nodes/+/net/#"

MESSAGE_FOR_KIND: dict[str, type[Message]] = {
    SUBNET: SubnetRequest,
    SUBNET_RESULT: SubnetResult,
    TABLEQUERY_REQUEST: TableQueryRequest,
    TABLEQUERY_RESULT: TableQueryResult,
    SERVICE_DEPLOYED: ServiceDeployed,
    SERVICE_UNDEPLOYED: ServiceUndeployed,
    ADDRESS_CHANGED: AddressChanged,
    INTEREST_REMOVE: InterestRemove,
}

MAX_NODE_ID_LENGTH = 128
MAX_JOB_NAME_LENGTH = 256

_NODE_PREFIX, _NODE_INFIX = "nodes/", "/net/"
_JOB_PREFIX, _JOB_SUFFIX = "jobs/", "/updates_available"
# Topic separators and wildcards, plus the control characters MQTT says topics should not hold.
_FORBIDDEN = (
    frozenset("/+#") | frozenset(map(chr, range(0x20))) | frozenset(map(chr, range(0x7F, 0xA0)))
)


class InvalidTopic(ValueError):
    """A topic that cannot be built from the given id or kind; the message says why."""


@dataclass(frozen=True)
class NodeTopic:
    """A parsed node topic: which node it concerns and which kind of message it carries."""

    node_id: str
    kind: str

    @property
    def message_class(self) -> type[Message]:
        return MESSAGE_FOR_KIND[self.kind]


def _segment_problem(value: object, max_length: int) -> str | None:
    """Why `value` cannot be one topic level, or None if it can."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"is too long ({len(value)} characters, at most {max_length})"
    forbidden = _FORBIDDEN.intersection(value)
    if forbidden:
        return f"must not contain {', '.join(map(repr, sorted(forbidden)))}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (lone surrogate)"
    return None


def _checked_segment(value: object, what: str, max_length: int) -> str:
    problem = _segment_problem(value, max_length)
    if problem is not None or not isinstance(value, str):
        raise InvalidTopic(f"{what} {reprlib.repr(value)} {problem}")
    return value


def node_topic(node_id: str, kind: str) -> str:
    """`nodes/<node_id>/net/<kind>`; raise InvalidTopic for a bad node id or unknown kind."""
    node_id = _checked_segment(node_id, "node id", MAX_NODE_ID_LENGTH)
    if not isinstance(kind, str) or kind not in MESSAGE_FOR_KIND:
        raise InvalidTopic(f"unknown node topic kind {reprlib.repr(kind)}")
    return f"{_NODE_PREFIX}{node_id}{_NODE_INFIX}{kind}"


def job_updates_topic(job_name: str) -> str:
    """`jobs/<job_name>/updates_available`; raise InvalidTopic if the name cannot be a level."""
    job_name = _checked_segment(job_name, "job name", MAX_JOB_NAME_LENGTH)
    return f"{_JOB_PREFIX}{job_name}{_JOB_SUFFIX}"


def parse_node_topic(topic: str) -> NodeTopic | None:
    """The node id and kind of `nodes/<id>/net/<known kind>`, else None."""
    if not isinstance(topic, str):
        return None
    parts = topic.split("/", 3)
    if len(parts) != 4 or parts[0] != "nodes" or parts[2] != "net":
        return None
    node_id, kind = parts[1], parts[3]
    if kind not in MESSAGE_FOR_KIND or _segment_problem(node_id, MAX_NODE_ID_LENGTH):
        return None
    return NodeTopic(node_id=node_id, kind=kind)


def parse_job_updates_topic(topic: str) -> str | None:
    """The job name (or service IP string) of `jobs/<name>/updates_available`, else None."""
    if not isinstance(topic, str):
        return None
    if not (topic.startswith(_JOB_PREFIX) and topic.endswith(_JOB_SUFFIX)):
        return None
    job_name = topic[len(_JOB_PREFIX) : -len(_JOB_SUFFIX)]
    if _segment_problem(job_name, MAX_JOB_NAME_LENGTH):
        return None
    return job_name
