"""Tests of oakestra_net.topics: topics are built and parsed as upstream names them."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from oakestra_net import topics
from oakestra_net.messages import (
    AddressChanged,
    InterestRemove,
    ServiceDeployed,
    ServiceUndeployed,
    SubnetRequest,
    SubnetResult,
    TableQueryRequest,
    TableQueryResult,
)
from oakestra_net.topics import (
    CLUSTER_SUBSCRIPTION,
    MESSAGE_FOR_KIND,
    SHARED_CLUSTER_SUBSCRIPTION,
    InvalidTopic,
    NodeTopic,
    job_updates_topic,
    node_topic,
    parse_job_updates_topic,
    parse_node_topic,
)

NODE = "6630f1b2c3d4e5f6000000bb"
JOB = "X.default.X3.default"

# kind constant -> (its upstream string, the message class travelling on it)
KINDS = {
    topics.SUBNET: ("subnet", SubnetRequest),
    topics.SUBNET_RESULT: ("subnetwork/result", SubnetResult),
    topics.TABLEQUERY_REQUEST: ("tablequery/request", TableQueryRequest),
    topics.TABLEQUERY_RESULT: ("tablequery/result", TableQueryResult),
    topics.SERVICE_DEPLOYED: ("service/deployed", ServiceDeployed),
    topics.SERVICE_UNDEPLOYED: ("service/undeployed", ServiceUndeployed),
    topics.ADDRESS_CHANGED: ("service/address-changed", AddressChanged),
    topics.INTEREST_REMOVE: ("interest/remove", InterestRemove),
}


@pytest.mark.parametrize(("kind", "upstream"), [(k, u) for k, (u, _) in KINDS.items()])
def test_kind_constant_is_the_upstream_string(kind, upstream):
    assert kind == upstream


def test_each_kind_maps_to_its_message_class():
    expected = {kind: cls for kind, (_, cls) in KINDS.items()}
    assert expected == MESSAGE_FOR_KIND


def test_subscriptions():
    assert CLUSTER_SUBSCRIPTION == "nodes/+/net/#"
    assert SHARED_CLUSTER_SUBSCRIPTION == "$share/cluster-sm/nodes/+/net/#"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("node_id", [NODE, "B", "worker-1.example", "n\u00f6de"])
def test_node_topic_round_trips(node_id, kind):
    topic = node_topic(node_id, kind)
    assert topic == f"nodes/{node_id}/net/{kind}"
    assert topic_matches_sub(CLUSTER_SUBSCRIPTION, topic)
    parsed = parse_node_topic(topic)
    assert parsed == NodeTopic(node_id=node_id, kind=kind)
    assert parsed.message_class is MESSAGE_FOR_KIND[kind]


def test_upstream_examples():
    assert node_topic("B", topics.SERVICE_DEPLOYED) == "nodes/B/net/service/deployed"
    assert node_topic("A", topics.TABLEQUERY_REQUEST) == "nodes/A/net/tablequery/request"
    assert job_updates_topic(JOB) == "jobs/X.default.X3.default/updates_available"


@pytest.mark.parametrize(
    ("node_id", "problem"),
    [
        ("", "must not be empty"),
        ("a/b", "must not contain '/'"),
        ("a+b", "must not contain '+'"),
        ("#", "must not contain '#'"),
        ("a\x00b", "must not contain '\\x00'"),
        ("a\nb", "must not contain '\\n'"),
        ("x" * 129, "is too long (129 characters, at most 128)"),
        ("\ud800", "is not valid Unicode"),
        (5, "must be a string, got int"),
        (None, "must be a string, got NoneType"),
    ],
)
def test_bad_node_id_is_refused(node_id, problem):
    with pytest.raises(InvalidTopic) as caught:
        node_topic(node_id, topics.SUBNET)
    assert str(caught.value).startswith("node id ")
    assert problem in str(caught.value)


def test_node_id_length_limit_is_inclusive():
    assert parse_node_topic(node_topic("x" * 128, topics.SUBNET)).node_id == "x" * 128


@pytest.mark.parametrize("kind", ["unknown", "", "subnetwork", "net/subnet", None, ["subnet"]])
def test_unknown_kind_is_refused(kind):
    with pytest.raises(InvalidTopic, match="unknown node topic kind"):
        node_topic(NODE, kind)


def test_invalid_topic_is_a_value_error():
    assert issubclass(InvalidTopic, ValueError)


@pytest.mark.parametrize(
    "topic",
    [
        "nodes//net/subnet",
        "nodes/a/b/net/subnet",
        "nodes/x/net/unknown",
        "nodes/x/net/",
        "nodes/x/net",
        "nodes/x",
        "node/x/net/subnet",
        "nodes/x/nett/subnet",
        "nodes/x/net/subnet/extra",
        "nodes/x/net/service",
        "nodes/+/net/subnet",
        "nodes/#/net/subnet",
        "/nodes/x/net/subnet",
        "$share/cluster-sm/nodes/x/net/subnet",
        f"nodes/{'x' * 129}/net/subnet",
        "jobs/X.default.X3.default/updates_available",
        "",
        b"nodes/x/net/subnet",
        None,
    ],
)
def test_foreign_or_malformed_node_topic_parses_as_none(topic):
    assert parse_node_topic(topic) is None


@pytest.mark.parametrize("name", [JOB, "10.30.1.30", "fdff:2000::1", "a" * 256])
def test_job_updates_topic_round_trips(name):
    topic = job_updates_topic(name)
    assert topic == f"jobs/{name}/updates_available"
    assert parse_job_updates_topic(topic) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "must not be empty"),
        ("a/b", "must not contain '/'"),
        ("+", "must not contain '+'"),
        ("a#", "must not contain '#'"),
        ("a" * 257, "is too long"),
        (b"X.default.X3.default", "must be a string"),
    ],
)
def test_bad_job_name_is_refused(name, problem):
    with pytest.raises(InvalidTopic) as caught:
        job_updates_topic(name)
    assert str(caught.value).startswith("job name ")
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    "topic",
    [
        "jobs//updates_available",
        "jobs/updates_available",
        "jobs/a/b/updates_available",
        "jobs/x/updates",
        "jobs/x/updates_available/extra",
        "jobs/+/updates_available",
        "job/x/updates_available",
        "nodes/x/net/subnet",
        "",
        None,
    ],
)
def test_foreign_or_malformed_job_topic_parses_as_none(topic):
    assert parse_job_updates_topic(topic) is None


@settings(max_examples=300, deadline=None)
@given(node_id=st.text(max_size=140), kind=st.sampled_from(sorted(KINDS)))
def test_any_node_id_either_round_trips_or_is_refused(node_id, kind):
    try:
        topic = node_topic(node_id, kind)
    except InvalidTopic:
        return
    assert parse_node_topic(topic) == NodeTopic(node_id=node_id, kind=kind)


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=260))
def test_any_job_name_either_round_trips_or_is_refused(name):
    try:
        topic = job_updates_topic(name)
    except InvalidTopic:
        return
    assert parse_job_updates_topic(topic) == name


@settings(max_examples=300, deadline=None)
@given(
    topic=st.text(max_size=80)
    | st.builds(
        "/".join,
        st.lists(st.sampled_from(["nodes", "net", "jobs", "x", "", "+", "subnet", "result"])),
    )
)
def test_parsing_arbitrary_text_never_raises(topic):
    parsed = parse_node_topic(topic)
    if parsed is not None:
        assert node_topic(parsed.node_id, parsed.kind) == topic
    job_name = parse_job_updates_topic(topic)
    if job_name is not None:
        assert job_updates_topic(job_name) == topic
