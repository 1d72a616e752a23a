"""Tests of oakestra_net.messages: upstream payloads round trip, bad payloads are refused."""

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oakestra_net.messages import (
    MAX_INSTANCES,
    MAX_PAYLOAD_BYTES,
    MAX_REJECTION_REASONS,
    MAX_SERVICE_IPS,
    AddressChanged,
    InterestRemove,
    InvalidMessage,
    ServiceDeployed,
    ServiceIp,
    ServiceUndeployed,
    SubnetRequest,
    SubnetResult,
    TableQueryInstance,
    TableQueryRequest,
    TableQueryResult,
    UpdatesAvailable,
)

JOB = "X.default.X3.default"

# Payloads as upstream sends them (and the running example).
SUBNET_GET = {"METHOD": "GET"}
SUBNET_RESULT = {"address": "10.18.0.0", "addressv6": "fc00::"}
QUERY_BY_NAME = {"sname": JOB, "sip": ""}
QUERY_BY_IP = {"sname": "", "sip": "10.30.1.30"}
INSTANCE = {
    "instance_number": 0,
    "instance_ip": "10.30.0.3",
    "instance_ip_v6": "fdff::2",
    "cluster_id": "6630f1b2c3d4e5f600000001",
    "namespace_ip": "10.18.0.66",
    "namespace_ip_v6": "fc00::102",
    "host_ip": "131.1.21.5",
    "host_port": 55301,
    "worker_id": "6630f1b2c3d4e5f6000000bb",
    "service_ip": [
        {"IpType": "RR", "Address": "10.30.1.30", "Address_v6": "fdff:2000::1"},
        {"IpType": "instance_ip", "Address": "10.30.0.3", "Address_v6": "fdff::2"},
    ],
}
QUERY_RESULT = {"app_name": JOB, "query_key": "10.30.1.30", "instance_list": [INSTANCE]}
DEPLOYED = {
    "appname": JOB,
    "status": "DEPLOYED",
    "instance_number": 0,
    "nsip": "10.18.0.66",
    "nsipv6": "fc00::102",
    "host_port": "55301",
    "host_ip": "131.1.21.5",
}
UNIKERNEL_DEPLOYED = {**DEPLOYED, "nsip": "10.18.0.67", "nsipv6": "<nil>"}
UNDEPLOYED = {**DEPLOYED, "status": ""}
ADDRESS_CHANGED = {**DEPLOYED, "status": "", "nsip": "", "nsipv6": "", "host_ip": "131.1.21.9"}
INTEREST_BY_NAME = {"appname": JOB}
INTEREST_BY_IP = {"appname": "10.30.1.30"}
UPDATES = {"type": "DEPLOYMENT"}

RR_X3 = ServiceIp(ip_type="RR", address="10.30.1.30", address_v6="fdff:2000::1")
INSTANCE_IP_X3 = ServiceIp(ip_type="instance_ip", address="10.30.0.3", address_v6="fdff::2")
INSTANCE_OBJECT = TableQueryInstance(
    instance_number=0,
    instance_ip="10.30.0.3",
    instance_ip_v6="fdff::2",
    cluster_id="6630f1b2c3d4e5f600000001",
    namespace_ip="10.18.0.66",
    namespace_ip_v6="fc00::102",
    host_ip="131.1.21.5",
    host_port=55301,
    service_ip=(RR_X3, INSTANCE_IP_X3),
    worker_id="6630f1b2c3d4e5f6000000bb",
)
REPORT_ARGS = dict(
    appname=JOB,
    instance_number=0,
    nsip="10.18.0.66",
    nsipv6="fc00::102",
    host_ip="131.1.21.5",
    host_port="55301",
)

# (class, upstream payload, the object it must parse into)
EXAMPLES = [
    (SubnetRequest, SUBNET_GET, SubnetRequest(method="GET")),
    (SubnetRequest, {"METHOD": "DELETE"}, SubnetRequest(method="DELETE")),
    (SubnetResult, SUBNET_RESULT, SubnetResult(address="10.18.0.0", addressv6="fc00::")),
    (TableQueryRequest, QUERY_BY_NAME, TableQueryRequest(sname=JOB, sip="")),
    (TableQueryRequest, QUERY_BY_IP, TableQueryRequest(sname="", sip="10.30.1.30")),
    (ServiceIp, INSTANCE["service_ip"][0], RR_X3),
    (TableQueryInstance, INSTANCE, INSTANCE_OBJECT),
    (
        TableQueryResult,
        QUERY_RESULT,
        TableQueryResult(app_name=JOB, query_key="10.30.1.30", instance_list=(INSTANCE_OBJECT,)),
    ),
    (ServiceDeployed, DEPLOYED, ServiceDeployed(**REPORT_ARGS)),
    (
        ServiceDeployed,
        UNIKERNEL_DEPLOYED,
        ServiceDeployed(**{**REPORT_ARGS, "nsip": "10.18.0.67", "nsipv6": "<nil>"}),
    ),
    (ServiceUndeployed, UNDEPLOYED, ServiceUndeployed(**REPORT_ARGS)),
    (
        AddressChanged,
        ADDRESS_CHANGED,
        AddressChanged(**{**REPORT_ARGS, "nsip": "", "nsipv6": "", "host_ip": "131.1.21.9"}),
    ),
    (InterestRemove, INTEREST_BY_NAME, InterestRemove(appname=JOB)),
    (InterestRemove, INTEREST_BY_IP, InterestRemove(appname="10.30.1.30")),
    (UpdatesAvailable, UPDATES, UpdatesAvailable(type="DEPLOYMENT")),
    (UpdatesAvailable, {"type": "UNDEPLOYMENT"}, UpdatesAvailable(type="UNDEPLOYMENT")),
]
EXAMPLE_IDS = [f"{cls.__name__}-{i}" for i, (cls, _, _) in enumerate(EXAMPLES)]
ALL_CLASSES = sorted({cls for cls, _, _ in EXAMPLES}, key=lambda cls: cls.__name__)
# One valid payload per class, the base of the mutation tests below.
VALID = {
    SubnetRequest: SUBNET_GET,
    SubnetResult: SUBNET_RESULT,
    TableQueryRequest: QUERY_BY_IP,
    ServiceIp: INSTANCE["service_ip"][0],
    TableQueryInstance: INSTANCE,
    TableQueryResult: QUERY_RESULT,
    ServiceDeployed: DEPLOYED,
    ServiceUndeployed: UNDEPLOYED,
    AddressChanged: ADDRESS_CHANGED,
    InterestRemove: INTEREST_BY_NAME,
    UpdatesAvailable: UPDATES,
}
# Keys that may be absent: unplaced instances have no location yet; worker_id is optional.
OPTIONAL_KEYS = {
    TableQueryInstance: {"namespace_ip", "namespace_ip_v6", "host_ip", "host_port", "worker_id"}
}


def with_field(cls, key, value):
    payload = copy.deepcopy(VALID[cls])
    payload[key] = value
    return payload


def rejection(cls, payload) -> str:
    with pytest.raises(InvalidMessage) as caught:
        cls.from_json(payload)
    return str(caught.value)


# --- round trips of upstream payloads ---------------------------------------------------


@pytest.mark.parametrize(("cls", "payload", "expected"), EXAMPLES, ids=EXAMPLE_IDS)
def test_upstream_payload_parses_into_expected_object(cls, payload, expected):
    assert cls.from_json(payload) == expected
    assert cls.from_json(json.dumps(payload)) == expected
    assert cls.from_json(json.dumps(payload).encode()) == expected
    assert cls.from_json(bytearray(json.dumps(payload).encode())) == expected


@pytest.mark.parametrize(("cls", "payload", "expected"), EXAMPLES, ids=EXAMPLE_IDS)
def test_object_emits_exactly_the_upstream_payload(cls, payload, expected):
    assert expected.to_dict() == payload
    assert json.loads(expected.to_json()) == payload


def test_messages_are_frozen():
    message = SubnetRequest.from_json(SUBNET_GET)
    with pytest.raises(AttributeError):
        message.method = "DELETE"


def test_report_status_defaults():
    assert ServiceDeployed(**REPORT_ARGS).status == "DEPLOYED"
    assert ServiceUndeployed(**REPORT_ARGS).status == ""
    assert AddressChanged(**REPORT_ARGS).status == ""


def test_report_classes_are_distinct():
    deployed = ServiceDeployed.from_json(DEPLOYED)
    assert not isinstance(deployed, ServiceUndeployed | AddressChanged)
    assert ServiceUndeployed.from_json(DEPLOYED) != deployed


def test_unikernel_nil_ipv6_is_kept_and_readable_as_no_address():
    message = ServiceDeployed.from_json(UNIKERNEL_DEPLOYED)
    assert message.nsipv6 == "<nil>"
    assert message.namespace_ip_v6 == ""
    assert json.loads(message.to_json())["nsipv6"] == "<nil>"
    assert ServiceDeployed.from_json(DEPLOYED).namespace_ip_v6 == "fc00::102"


def test_unknown_extra_keys_are_ignored():
    payload = {**DEPLOYED, "future_field": [1, 2], "another": {"x": None}}
    assert ServiceDeployed.from_json(payload) == ServiceDeployed(**REPORT_ARGS)
    instance = {**INSTANCE, "Instance_ip_extra": "whatever"}
    assert TableQueryInstance.from_json(instance) == INSTANCE_OBJECT


def test_addresses_are_kept_as_received_not_canonicalised():
    message = TableQueryRequest.from_json({"sname": "", "sip": "FDFF:2000:0::0001"})
    assert message.sip == "FDFF:2000:0::0001"
    assert json.loads(message.to_json())["sip"] == "FDFF:2000:0::0001"


def test_non_ascii_strings_round_trip():
    message = InterestRemove.from_json('{"appname": "caf\u00e9.\u00fc.\u4e2d.x"}'.encode())
    assert message.appname == "caf\u00e9.\u00fc.\u4e2d.x"
    assert InterestRemove.from_json(message.to_json()) == message


# --- host_port, cluster_id and other conversions ----------------------------------------


@pytest.mark.parametrize(
    ("given", "emitted"), [(55301, "55301"), ("55301", "55301"), (0, "0"), ("08080", "8080")]
)
def test_report_host_port_is_accepted_as_int_or_digits_and_emitted_as_string(given, emitted):
    for cls in (ServiceDeployed, ServiceUndeployed, AddressChanged):
        message = cls.from_json({**DEPLOYED, "host_port": given})
        assert message.host_port == emitted
        assert json.loads(message.to_json())["host_port"] == emitted


@pytest.mark.parametrize(("given", "emitted"), [(55301, 55301), ("55301", 55301), ("0", 0)])
def test_instance_host_port_is_accepted_as_int_or_digits_and_emitted_as_int(given, emitted):
    message = TableQueryInstance.from_json({**INSTANCE, "host_port": given})
    assert message.host_port == emitted
    assert json.loads(message.to_json())["host_port"] == emitted


@pytest.mark.parametrize(
    "bad", [65536, -1, "65536", "99999", "", " 80", "80 ", "+80", "-1", "8_0", "\u0663", "80.0"]
)
def test_bad_host_port_is_rejected(bad):
    for cls in (ServiceDeployed, TableQueryInstance):
        message = rejection(cls, with_field(cls, "host_port", bad))
        assert "field 'host_port'" in message


def test_host_port_range_edges():
    assert ServiceDeployed.from_json({**DEPLOYED, "host_port": 65535}).host_port == "65535"
    assert TableQueryInstance.from_json({**INSTANCE, "host_port": "65535"}).host_port == 65535


def test_cluster_id_may_be_an_integer_and_is_kept_as_string():
    message = TableQueryInstance.from_json({**INSTANCE, "cluster_id": 7})
    assert message.cluster_id == "7"
    assert json.loads(message.to_json())["cluster_id"] == "7"


def test_unplaced_instance_location_reads_as_empty_and_is_sent_so():
    unplaced = {k: v for k, v in INSTANCE.items() if k not in OPTIONAL_KEYS[TableQueryInstance]}
    nulled = {**INSTANCE, "namespace_ip": None, "namespace_ip_v6": None, "host_ip": None}
    nulled["host_port"] = None
    for payload in (unplaced, nulled):
        message = TableQueryInstance.from_json(payload)
        assert (message.namespace_ip, message.namespace_ip_v6) == ("", "")
        assert (message.host_ip, message.host_port) == ("", 0)
        emitted = json.loads(message.to_json())
        assert emitted["namespace_ip"] == "" and emitted["host_port"] == 0
    assert TableQueryInstance.from_json(unplaced).worker_id is None
    assert "worker_id" not in TableQueryInstance.from_json(unplaced).to_dict()


def test_worker_id_null_reads_as_none():
    assert TableQueryInstance.from_json({**INSTANCE, "worker_id": None}).worker_id is None


def test_failed_resolution_has_null_app_name_and_no_instances():
    payload = {"app_name": None, "query_key": "10.30.9.9", "instance_list": []}
    message = TableQueryResult.from_json(payload)
    assert message == TableQueryResult(app_name=None, query_key="10.30.9.9", instance_list=())
    assert message.to_dict() == payload


def test_ipv6_node_address_is_accepted_as_host_ip():
    assert (
        ServiceDeployed.from_json({**DEPLOYED, "host_ip": "2001:db8::5"}).host_ip == "2001:db8::5"
    )
    assert TableQueryInstance.from_json({**INSTANCE, "host_ip": "2001:db8::5"}).host_ip


def test_subnet_result_with_one_family_only_is_accepted():
    assert SubnetResult.from_json({"address": "", "addressv6": "fc00::"}).address == ""
    assert SubnetResult.from_json({"address": "10.18.0.0", "addressv6": ""}).addressv6 == ""


# --- validation failures --------------------------------------------------------------


def test_error_names_payload_field_and_problem():
    message = rejection(TableQueryRequest, {"sname": "", "sip": 5})
    assert message == "tablequery/request: field 'sip' must be a string, got int"


def required_keys():
    for cls, payload in VALID.items():
        for key in payload:
            if key not in OPTIONAL_KEYS.get(cls, set()):
                yield pytest.param(cls, key, id=f"{cls.__name__}.{key}")


@pytest.mark.parametrize(("cls", "key"), list(required_keys()))
def test_missing_required_key_is_named(cls, key):
    payload = copy.deepcopy(VALID[cls])
    del payload[key]
    assert f"field '{key}' is missing" in rejection(cls, payload)


def test_nested_errors_carry_the_path():
    payload = copy.deepcopy(QUERY_RESULT)
    del payload["instance_list"][0]["instance_number"]
    assert TableQueryResult.from_json(payload).rejections == (
        "tablequery/result: field 'instance_list[0].instance_number' is missing",
    )
    payload = copy.deepcopy(QUERY_RESULT)
    payload["instance_list"][0]["service_ip"][1]["Address"] = "fdff::9"
    (message,) = TableQueryResult.from_json(payload).rejections
    assert message.startswith("tablequery/result: field 'instance_list[0].service_ip[1].Address'")
    assert "IPv4" in message


WRONG_TYPES = [
    (SubnetRequest, "METHOD", 1, "must be a string, got int"),
    (SubnetResult, "address", None, "must be a string, got null"),
    (TableQueryRequest, "sname", ["x"], "must be a string, got list"),
    (ServiceIp, "Address_v6", {"a": 1}, "must be a string, got object"),
    (TableQueryInstance, "instance_number", "0", "must be an integer, got string"),
    (TableQueryInstance, "instance_number", True, "must be an integer, got bool"),
    (TableQueryInstance, "instance_number", 0.0, "must be an integer, got float"),
    (TableQueryInstance, "cluster_id", True, "must be a string or an integer, got bool"),
    (TableQueryInstance, "cluster_id", 1.5, "must be a string or an integer, got float"),
    (TableQueryInstance, "host_port", True, "must be a port number"),
    (TableQueryInstance, "host_port", 80.0, "must be a port number"),
    (TableQueryInstance, "service_ip", {}, "must be a list, got object"),
    (TableQueryInstance, "worker_id", 5, "must be a string, got int"),
    (TableQueryResult, "app_name", 5, "must be a string, got int"),
    (TableQueryResult, "query_key", None, "must be a string, got null"),
    (TableQueryResult, "instance_list", "[]", "must be a list, got string"),
    (ServiceDeployed, "instance_number", False, "must be an integer, got bool"),
    (ServiceDeployed, "host_port", False, "must be a port number"),
    (ServiceDeployed, "status", 1, "must be a string, got int"),
    (AddressChanged, "nsip", 0, "must be a string, got int"),
    (InterestRemove, "appname", None, "must be a string, got null"),
    (UpdatesAvailable, "type", True, "must be a string, got bool"),
]


@pytest.mark.parametrize(("cls", "key", "value", "problem"), WRONG_TYPES)
def test_wrong_type_is_refused(cls, key, value, problem):
    assert f"field '{key}' {problem}" in rejection(cls, with_field(cls, key, value))


BAD_VALUES = [
    (SubnetRequest, "METHOD", "get", "must be GET or DELETE"),
    (SubnetRequest, "METHOD", "PUT", "must be GET or DELETE"),
    (UpdatesAvailable, "type", "deployment", "must be DEPLOYMENT or UNDEPLOYMENT"),
    (ServiceIp, "IpType", "Bogus", "must be RR, Closest, instance_ip or InstanceNumber"),
    (TableQueryInstance, "instance_number", -1, "must be between 0 and"),
    (TableQueryInstance, "instance_number", 2**63, "must be between 0 and"),
    (TableQueryInstance, "cluster_id", "", "must not be empty"),
    (TableQueryInstance, "cluster_id", 2**64, "is out of range"),
    (ServiceDeployed, "instance_number", -3, "must be between 0 and"),
    (ServiceDeployed, "appname", "", "must not be empty"),
    (ServiceDeployed, "nsip", "", "must not be empty"),
    (InterestRemove, "appname", "", "must not be empty"),
]


@pytest.mark.parametrize(("cls", "key", "value", "problem"), BAD_VALUES)
def test_bad_value_is_refused(cls, key, value, problem):
    assert f"field '{key}' {problem}" in rejection(cls, with_field(cls, key, value))


BAD_ADDRESSES = [
    (SubnetResult, "address", "10.18.0.300"),
    (SubnetResult, "address", "fc00::"),  # wrong family
    (SubnetResult, "address", "10.18.0.0/26"),
    (SubnetResult, "addressv6", "10.18.0.0"),
    (TableQueryRequest, "sip", "not-an-ip"),
    (TableQueryRequest, "sip", " 10.30.1.30"),
    (TableQueryRequest, "sip", "10.030.1.30"),  # leading zero: ambiguous (octal)
    (ServiceIp, "Address", "fdff:2000::1"),
    (ServiceIp, "Address_v6", "fe80::1%eth0"),  # scoped address
    (TableQueryInstance, "instance_ip", "10.30.0"),
    (TableQueryInstance, "instance_ip_v6", "fdff::g"),
    (TableQueryInstance, "namespace_ip", "fc00::102"),
    (TableQueryInstance, "host_ip", "node-b.example"),
    (ServiceDeployed, "nsip", "10.18.0.66\n"),
    (ServiceDeployed, "nsipv6", "10.18.0.66"),
    (ServiceDeployed, "nsipv6", "nil"),
    (ServiceDeployed, "host_ip", "131.1.21"),
    (AddressChanged, "nsip", "::1"),
]


@pytest.mark.parametrize(("cls", "key", "value"), BAD_ADDRESSES)
def test_bad_address_is_refused(cls, key, value):
    message = rejection(cls, with_field(cls, key, value))
    assert f"field '{key}' must be an IP" in message
    assert repr(value) in message


def test_address_error_lists_what_is_accepted():
    message = rejection(ServiceDeployed, {**DEPLOYED, "nsipv6": "x"})
    assert message == (
        "service/deployed: field 'nsipv6' must be an IPv6 address, '<nil>' or empty, got 'x'"
    )


def test_both_empty_is_refused_where_one_is_needed():
    assert "both empty" in rejection(SubnetResult, {"address": "", "addressv6": ""})
    assert "both empty" in rejection(TableQueryRequest, {"sname": "", "sip": ""})


def test_only_deployed_requires_a_namespace_ip():
    payload = {**DEPLOYED, "nsip": "", "nsipv6": ""}
    assert ServiceUndeployed.from_json(payload).nsip == ""
    assert AddressChanged.from_json(payload).nsip == ""
    rejection(ServiceDeployed, payload)


@pytest.mark.parametrize(
    ("cls", "key"),
    [
        (TableQueryRequest, "sname"),
        (TableQueryResult, "query_key"),
        (TableQueryResult, "app_name"),
        (ServiceDeployed, "appname"),
        (ServiceDeployed, "status"),
        (InterestRemove, "appname"),
        (TableQueryInstance, "cluster_id"),
        (TableQueryInstance, "worker_id"),
    ],
)
def test_strings_are_bounded(cls, key):
    assert cls.from_json(with_field(cls, key, "a" * 256))
    message = rejection(cls, with_field(cls, key, "a" * 257))
    assert f"field '{key}' is too long (257 characters, at most 256)" in message


def test_lone_surrogate_from_json_escape_is_refused():
    message = rejection(InterestRemove, '{"appname": "job\\ud800"}')
    assert "field 'appname' is not valid Unicode" in message


def test_huge_values_do_not_flood_the_error():
    assert len(rejection(SubnetResult, {"address": "x" * 10**6, "addressv6": ""})) < 200
    assert len(rejection(ServiceDeployed, {**DEPLOYED, "instance_number": -(10**5000)})) < 200
    assert len(rejection(ServiceDeployed, {**DEPLOYED, "nsip": "1" * 250})) < 200


def test_instance_list_is_bounded():
    at_limit = {**QUERY_RESULT, "instance_list": [INSTANCE] * MAX_INSTANCES}
    assert len(TableQueryResult.from_json(at_limit).instance_list) == MAX_INSTANCES
    too_many = {**QUERY_RESULT, "instance_list": [INSTANCE] * (MAX_INSTANCES + 1)}
    assert "field 'instance_list' has too many items (10001" in rejection(
        TableQueryResult, too_many
    )


def test_service_ip_list_is_bounded():
    entry = INSTANCE["service_ip"][0]
    assert TableQueryInstance.from_json({**INSTANCE, "service_ip": [entry] * MAX_SERVICE_IPS})
    payload = {**INSTANCE, "service_ip": [entry] * (MAX_SERVICE_IPS + 1)}
    assert "field 'service_ip' has too many items" in rejection(TableQueryInstance, payload)


def test_list_items_must_be_objects():
    payload = {**QUERY_RESULT, "instance_list": [INSTANCE, "instance"]}
    message = TableQueryResult.from_json(payload)
    assert message.rejections == (
        "tablequery/result: field 'instance_list[1]' must be an object, got string",
    )
    assert message.instance_list == (TableQueryInstance.from_json(INSTANCE),)


def test_a_bad_instance_is_left_out_and_counted_the_good_ones_kept():
    good = [{**INSTANCE, "instance_number": n, "host_ip": f"192.0.2.{n + 1}"} for n in range(5)]
    bad_host = {**INSTANCE, "instance_number": 5, "host_ip": "somewhere"}
    bad_number = {**INSTANCE, "instance_number": 2**70}
    payload = {**QUERY_RESULT, "instance_list": [*good[:2], bad_host, *good[2:], bad_number]}
    message = TableQueryResult.from_json(json.dumps(payload))
    assert [i.instance_number for i in message.instance_list] == [0, 1, 2, 3, 4]
    assert message.rejected == 2
    assert "instance_list[2].host_ip" in message.rejections[0]
    assert "instance_list[6].instance_number" in message.rejections[1]
    assert TableQueryResult.from_json(QUERY_RESULT).rejected == 0


def test_rejection_reasons_are_bounded():
    payload = {**QUERY_RESULT, "instance_list": ["junk"] * 1000}
    message = TableQueryResult.from_json(payload)
    assert message.instance_list == () and message.rejected == 1000
    assert len(message.rejections) == MAX_REJECTION_REASONS


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ("[]", "must be a JSON object, got list"),
        ('"GET"', "must be a JSON object, got string"),
        ("null", "must be a JSON object, got null"),
        ("42", "must be a JSON object, got int"),
        ("{", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"METHOD": "GET"} x', "not valid JSON"),
        ("\ufeff" + json.dumps(SUBNET_GET), "not valid JSON"),
        ("1" * 5000, "not valid JSON"),
        (b"\xff\xfe{}", "not valid UTF-8 (byte 0)"),
        (b'{"METHOD": "GET\xc3"}', "not valid UTF-8 (byte 15)"),
        ("[" * 100_000, "nested too deeply"),
        ('{"a":' * 100_000, "nested too deeply"),
        (None, "must be JSON text or a dict, got null"),
        (["METHOD", "GET"], "must be JSON text or a dict, got list"),
        (7, "must be JSON text or a dict, got int"),
    ],
)
def test_payload_that_is_not_a_json_object_is_refused(payload, problem):
    for cls in ALL_CLASSES:
        message = rejection(cls, payload)
        assert message.startswith(f"{cls._LABEL}: payload")
        assert problem in message


def test_oversized_payload_is_refused_before_parsing():
    padding = " " * (MAX_PAYLOAD_BYTES + 1)
    for payload in (padding + "{}", (padding + "{}").encode()):
        assert "payload too large" in rejection(SubnetRequest, payload)


# --- random input: only InvalidMessage may escape ----------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-1, max_value=70_000)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "GET", "RR", "10.30.1.30", "fdff::1", "<nil>", "55301", JOB])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def parse_or_reject(cls, data):
    """Parse `data`; only InvalidMessage may escape, and what parses must round trip."""
    try:
        message = cls.from_json(data)
    except InvalidMessage:
        return None
    assert type(message) is cls
    assert cls.from_json(message.to_json()) == message
    return message


@st.composite
def near_valid(draw, payload):
    """The schema's payload with some keys dropped or given random values, lists re-drawn."""
    result = {}
    for key, value in payload.items():
        action = draw(st.sampled_from(["keep"] * 6 + ["drop", "random"]))
        if action == "random":
            result[key] = draw(JSON_VALUES)
        elif action == "keep" and isinstance(value, list) and value:
            result[key] = draw(st.lists(near_valid(value[0]), max_size=3))
        elif action == "keep":
            result[key] = value
    return result


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=150, deadline=None)
@given(value=JSON_VALUES)
def test_random_json_only_raises_invalid_message(cls, value):
    parse_or_reject(cls, json.dumps(value))
    if isinstance(value, dict):
        parse_or_reject(cls, value)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_near_valid_payloads_only_raise_invalid_message(cls, data):
    payload = data.draw(near_valid(VALID[cls]))
    parse_or_reject(cls, payload)
    parse_or_reject(cls, json.dumps(payload).encode())


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=64) | st.text(max_size=64))
def test_random_bytes_and_text_only_raise_invalid_message(cls, raw):
    parse_or_reject(cls, raw)


@settings(max_examples=200, deadline=None)
@given(port=st.integers(min_value=0, max_value=65535), as_text=st.booleans())
def test_any_valid_port_round_trips(port, as_text):
    given_port = str(port) if as_text else port
    report = ServiceDeployed.from_json({**DEPLOYED, "host_port": given_port})
    assert json.loads(report.to_json())["host_port"] == str(port)
    instance = TableQueryInstance.from_json({**INSTANCE, "host_port": given_port})
    assert json.loads(instance.to_json())["host_port"] == port


def test_table_query_instance_reads_upstream_nil_v6_as_no_address():
    raw = {
        "instance_number": 0,
        "instance_ip": "10.30.0.5",
        "instance_ip_v6": "fdff::5",
        "cluster_id": "c1",
        "namespace_ip": "10.16.0.3",
        "namespace_ip_v6": "<nil>",
        "host_ip": "198.18.0.2",
        "host_port": 50103,
        "service_ip": [],
    }
    assert TableQueryInstance.from_json(raw).namespace_ip_v6 == ""
