"""1,000 malformed payloads on every node topic: the service keeps serving and never dies.

Bad JSON, wrong types, missing keys, huge strings, and well-formed messages naming
jobs nobody knows. Every bad message is accounted for exactly once in the log: invalid
ones by a rate-limited line or a summary's suppressed count; valid queries sent in the
middle of the flood are answered; no handler raises.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import pytest
from csm_helpers import X3, X3_ID

from oakestra_net.messages import InvalidMessage
from oakestra_net.topics import MESSAGE_FOR_KIND
from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("fail_on_log_exception")

PER_TOPIC = 1000
NODES_PER_TOPIC = 16
HUGE = "x" * 50_000

VALID = {
    "subnet": {"METHOD": "GET"},
    "tablequery/request": {"sname": X3, "sip": ""},
    "service/deployed": {
        "appname": X3,
        "status": "DEPLOYED",
        "instance_number": 0,
        "nsip": "10.16.0.2",
        "nsipv6": "fc00::2",
        "host_ip": "192.0.2.1",
        "host_port": "50103",
    },
    "interest/remove": {"appname": X3},
}
VALID["service/undeployed"] = {**VALID["service/deployed"], "status": ""}
VALID["service/address-changed"] = {**VALID["service/deployed"], "status": "", "nsip": ""}
WRONG_TYPES = [None, 17, -1, 3.5, True, [], {}, ["x"], "", "not-an-ip", 2**70]
BAD_JSON = [b"", b"{", b"\xff\xfe\x00", b"[1, 2]", b"null", b'"text"', b"{" * 5000, b"{'a': 1}"]

# The one log line each kind of bad message produces.
INVALID_EVENT = "invalid message dropped"
UNKNOWN_JOB_EVENTS = {
    "tablequery/request": "table query for an unknown service",
    "service/deployed": "report on an instance the root does not know dropped",
    "service/undeployed": "report on an instance not cached here, nothing to do",
    "service/address-changed": "report on an instance the root does not know dropped",
    "interest/remove": "root interest removed",
}


def unknown_job(kind: str, i: int) -> dict:
    name = f"Unknown{i}.default.svc.default"
    if kind == "tablequery/request":
        return {"sname": name, "sip": ""} if i % 2 else {"sname": "", "sip": f"10.30.200.{i % 250}"}
    return {**VALID[kind], "appname": name}


def malformed(kind: str, i: int) -> tuple[bytes, str]:
    """The i-th bad payload for `kind` and what it is ("invalid" or "unknown")."""
    base = VALID[kind]
    keys = sorted(base)
    category = i % 5
    if category == 4 and kind in UNKNOWN_JOB_EVENTS:
        return json.dumps(unknown_job(kind, i)).encode(), "unknown"
    if category == 0:
        return BAD_JSON[i % len(BAD_JSON)], "invalid"
    if category == 1:  # missing key
        return json.dumps(
            {k: v for k, v in base.items() if k != keys[i % len(keys)]}
        ).encode(), "invalid"
    if category == 2 or category == 4:  # wrong type
        return _wrong_type(kind, base, keys[i % len(keys)], i), "invalid"
    key = keys[i % len(keys)]  # huge strings
    text = HUGE if i % 50 == 3 else "y" * (257 + i % 1000)
    return json.dumps({**base, key: text}).encode(), "invalid"


def _wrong_type(kind: str, base: dict, key: str, i: int) -> bytes:
    """`base` with `key` set to the first value from WRONG_TYPES (rotated by i) it rejects."""
    for offset in range(len(WRONG_TYPES)):
        payload = json.dumps({**base, key: WRONG_TYPES[(i + offset) % len(WRONG_TYPES)]})
        try:
            MESSAGE_FOR_KIND[kind].from_json(payload)
        except InvalidMessage:
            return payload.encode()
    raise AssertionError(f"no wrong value for {kind} {key}")


def test_the_generator_makes_only_bad_payloads():
    for kind in VALID:
        for i in range(PER_TOPIC):
            payload, category = malformed(kind, i)
            if category == "invalid":
                with pytest.raises(InvalidMessage):
                    MESSAGE_FOR_KIND[kind].from_json(payload)
            else:
                MESSAGE_FOR_KIND[kind].from_json(payload)


def test_flood_of_malformed_payloads(root_server, cluster, make_node, caplog):
    caplog.set_level(logging.INFO)
    root_server.deploy_service(X3_ID, "X3", "10.30.1.30")
    root_server.deploy_instance(X3_ID, 0)
    good = make_node()
    good.deployed(X3, 0, "10.16.0.2", "fc00::2", "192.0.2.1", 50103)
    wait_until(lambda: good.query(sname=X3)["instance_list"], message="X3 not served")
    flooder = make_node("flooder")

    expected: Counter = Counter()
    started = time.monotonic()
    for index, kind in enumerate(VALID):
        for i in range(PER_TOPIC):
            payload, category = malformed(kind, i)
            node_id = f"bad{index}x{i % NODES_PER_TOPIC}"
            flooder.client.publish(f"nodes/{node_id}/net/{kind}", payload)
            expected[(kind, category)] += 1
            if i % 250 == 0:  # a valid node keeps getting answers during the flood
                assert good.query(sip="10.30.1.30", timeout=5)["app_name"] == X3
    published = time.monotonic() - started

    invalid_lines = Counter()

    def logged() -> Counter:
        seen: Counter = Counter()
        invalid_lines.clear()
        for record in caplog.get_records("call"):
            fields = getattr(record, "fields", {})
            event = record.getMessage()
            kind = _kind_of(fields)
            if event == INVALID_EVENT and kind:
                seen[(kind, "invalid")] += 1
                invalid_lines[kind] += 1
            elif event.startswith(f"{INVALID_EVENT} (") and kind:
                seen[(kind, "invalid")] += fields["suppressed"]
                invalid_lines[kind] += 1
            elif kind and event == UNKNOWN_JOB_EVENTS.get(kind):
                seen[(kind, "unknown")] += 1
        return seen

    try:
        # 6,000 messages, each logged or counted; a loaded 2-core machine is slow
        wait_until(lambda: logged() == expected, timeout=180)
    except AssertionError:
        seen = logged()
        missing, extra = expected - seen, seen - expected
        raise AssertionError(f"not logged once: missing {missing}, extra {extra}") from None
    cluster.idle(30)
    assert logged() == expected  # exactly once each, nothing logged twice later
    # a few lines per topic kind and 10 s window, not one per message
    assert max(invalid_lines.values()) <= 6 * (published // 10 + 2), invalid_lines
    assert sum(expected.values()) == PER_TOPIC * len(VALID)
    answer = good.query(sip="10.30.1.30")
    assert [i["namespace_ip"] for i in answer["instance_list"]] == ["10.16.0.2"]
    assert good.request_subnet()["address"]
    stats = cluster.parts.endpoint.client.stats()
    assert stats["handler_errors"] == 0 and stats["dropped"] == 0
    assert cluster.parts.endpoint.connected
    assert cluster.client.get("/healthz").status_code == 200
    print(f"published {sum(expected.values())} bad messages in {published:.1f} s")


def _kind_of(fields: dict) -> str | None:
    """The topic kind a cluster log record is about (from its topic, node id or job)."""
    if str(fields.get("job_name", "")).startswith("Unknown") and "node_id" not in fields:
        return "interest/remove"  # the root interest removal names only the job
    topic = fields.get("topic")
    if isinstance(topic, str) and topic.startswith("nodes/bad"):
        return topic.split("/", 3)[3]
    node = fields.get("node_id") or fields.get("lane", "").removeprefix("node:")
    if isinstance(node, str) and node.startswith("bad"):
        return list(VALID)[int(node[3 : node.index("x")])]
    return None
