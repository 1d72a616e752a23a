"""The node endpoint's remembered parses: same messages, same refusals, bounded."""

from __future__ import annotations

import pytest

from cluster_service_manager.mqtt_endpoint import QueryCache
from oakestra_net import names
from oakestra_net.messages import InvalidMessage, TableQueryRequest

BY_NAME = b'{"sname": "X.default.X3.default", "sip": ""}'
BY_IP = b'{"sname": "", "sip": "10.30.1.30"}'


def test_a_remembered_query_equals_a_fresh_parse_and_refusals_repeat():
    queries = QueryCache(size=1)
    for payload in (BY_NAME, BY_IP, BY_NAME):  # size 1: each evicts the other
        first = queries.parse(TableQueryRequest, payload)
        assert first == TableQueryRequest.from_json(payload)
        assert queries.parse(TableQueryRequest, payload) is first
    for _ in range(2):
        with pytest.raises(InvalidMessage):
            queries.parse(TableQueryRequest, b'{"sname": "", "sip": ""}')


def test_job_names_are_remembered_only_when_valid(monkeypatch):
    monkeypatch.setattr(names, "MAX_REMEMBERED_NAMES", 2)
    monkeypatch.setattr(names, "_VALID_NAMES", set())
    valid = ["a.b.c.d", "a.b.c.e", "a.b.c.f", "a.b.c.d"]
    assert all(names.is_valid_job_name(v) for v in valid)
    assert len(names._VALID_NAMES) <= 2
    for invalid in ("a.b.c", "a.b.c.d.e", "", None, ["a.b.c.d"]):
        assert not names.is_valid_job_name(invalid)
        assert not names.is_valid_job_name(invalid)
