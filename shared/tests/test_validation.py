"""Untrusted JSON into models: every refusal is an InvalidInput naming the field."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from oakestra_net.validation import (
    MAX_DEPTH,
    InstanceNumber,
    InvalidInput,
    IpV4Text,
    JobNameText,
    Port,
    load_json,
    parse,
)


class Report(BaseModel):
    instance_number: InstanceNumber
    host_port: Port
    namespace_ip: IpV4Text | None = None


class Body(BaseModel):
    job_name: JobNameText
    reports: list[Report]


GOOD = {"job_name": "a.b.c.d", "reports": [{"instance_number": 0, "host_port": "50103"}]}


def refusal(data) -> InvalidInput:
    text = data if isinstance(data, str | bytes) else json.dumps(data)
    with pytest.raises(InvalidInput) as caught:
        parse(Body, load_json(text))
    return caught.value


def test_valid_input_parses_and_digit_text_becomes_an_int():
    body = parse(Body, load_json(json.dumps(GOOD)))
    assert body.reports[0].host_port == 50103 and body.job_name == "a.b.c.d"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("--1", "ASCII digits"),
        ("١", "ASCII digits"),
        ("٥٠١٠٣", "ASCII digits"),
        (" 5", "ASCII digits"),
        ("9" * 5000, "ASCII digits"),
        (2**70, "less than or equal"),
        (True, "boolean"),
        (5.0, "valid integer"),
        (0, "greater than or equal"),
    ],
)
def test_numbers_are_json_ints_or_ascii_digits_in_range(value, problem):
    data = {**GOOD, "reports": [{"instance_number": 1, "host_port": value}]}
    err = refusal(data)
    assert err.field == "reports[0].host_port" and problem in err.reason, err


def test_deep_nesting_is_refused_without_recursion_error():
    assert refusal("[" * 200_000 + "]" * 200_000).field == ""
    deep: object = 1
    for _ in range(MAX_DEPTH):
        deep = {"x": deep}
    err = refusal({**GOOD, "extra": deep})
    assert err.field.startswith("extra.x.x") and "nested too deeply" in err.reason


def test_other_bad_json_is_named():
    assert "not valid JSON" in refusal('{"a": ' + "1" * 5000 + "}").reason
    assert refusal('{"job_name": "\\ud800"}').field == "job_name"
    assert refusal(b"\xff{}").field == ""
    err = refusal({**GOOD, "job_name": "a.b.c"})
    assert err.field == "job_name" and "4 dot-separated parts" in err.reason
    err = refusal(
        {**GOOD, "reports": [{"instance_number": 1, "host_port": 1, "namespace_ip": "x"}]}
    )
    assert err.field == "reports[0].namespace_ip" and "IPv4" in err.reason
    assert refusal({"reports": []}).reason == "is required"
