"""Job names: part validation, parsing, formatting and the URL path encoding."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oakestra_net.names import (
    NAME_PART_RE,
    InvalidName,
    JobName,
    decode_path,
    encode_path,
    format_job_name,
    is_valid_job_name,
    parse_job_name,
    validate_name_part,
)

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
name_parts = st.text(alphabet=ALNUM, min_size=1, max_size=30)


@pytest.mark.parametrize("value", ["X", "X1", "default", "a" * 30, "0", "ABCxyz019"])
def test_valid_parts_are_returned_unchanged(value):
    assert validate_name_part(value, "app_name") == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a" * 31,
        "x-y",
        "x_y",
        "x.y",
        "x y",
        " x",
        "x\n",  # `$` alone would accept a trailing newline
        "\nx",
        "x\t",
        "é",
        "١",  # Arabic-Indic digit: a unicode digit, not 0-9
        "ｘ",  # fullwidth letter
        "a/b",
        "a%2e",
    ],
)
def test_invalid_parts_are_rejected_with_field_and_value(value):
    with pytest.raises(InvalidName) as err:
        validate_name_part(value, "app_ns")
    assert str(err.value) == f"app_ns must be 1-30 letters or digits, got {value!r}"


def test_message_matches_the_documented_example():
    with pytest.raises(InvalidName, match=r"^app_name must be 1-30 letters or digits, got 'x-y'$"):
        validate_name_part("x-y", "app_name")


@pytest.mark.parametrize("value", [None, 5, 1.5, b"abc", ["abc"], {"a": 1}, True])
def test_non_string_parts_are_rejected(value):
    with pytest.raises(
        InvalidName, match=rf"^service_name must be a string, got {type(value).__name__}"
    ):
        validate_name_part(value, "service_name")


def test_invalid_name_is_a_value_error():
    assert issubclass(InvalidName, ValueError)


def test_huge_input_does_not_flood_the_message():
    with pytest.raises(InvalidName) as err:
        validate_name_part("-" * 1_000_000, "app_name")
    assert len(str(err.value)) < 200


@given(name_parts)
def test_every_alphanumeric_part_up_to_30_is_valid(value):
    assert validate_name_part(value, "f") == value
    assert NAME_PART_RE.fullmatch(value)


@given(st.text(max_size=40))
def test_validation_agrees_with_the_rule(value):
    expected = 1 <= len(value) <= 30 and all(c in ALNUM for c in value)
    try:
        validate_name_part(value, "f")
    except InvalidName:
        assert not expected
    else:
        assert expected


def test_job_name_str_joins_parts_with_dots():
    job = JobName("X", "default", "X1", "default")
    assert str(job) == "X.default.X1.default"
    assert job.app_name == "X" and job.service_ns == "default"


def test_job_name_is_frozen_and_hashable():
    job = JobName("a", "b", "c", "d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.app_name = "z"  # type: ignore[misc]
    assert {job, JobName("a", "b", "c", "d")} == {job}


@pytest.mark.parametrize(
    "field, args",
    [
        ("app_name", ("a-b", "b", "c", "d")),
        ("app_ns", ("a", "", "c", "d")),
        ("service_name", ("a", "b", "c.c", "d")),
        ("service_ns", ("a", "b", "c", None)),
    ],
)
def test_job_name_cannot_be_built_with_an_invalid_part(field, args):
    with pytest.raises(InvalidName, match=rf"^{field} must be"):
        JobName(*args)


def test_parse_job_name():
    assert parse_job_name("X.default.X1.default") == JobName("X", "default", "X1", "default")


@pytest.mark.parametrize(
    "value, parts",
    [
        ("", 1),
        ("abc", 1),
        ("a.b.c", 3),
        ("a.b.c.d.e", 5),
        ("a.b.c.d.", 5),
        (".a.b.c.d", 5),
        ("a_b_c_d", 1),  # the path encoding, not a job name
    ],
)
def test_parse_job_name_needs_four_parts(value, parts):
    with pytest.raises(InvalidName) as err:
        parse_job_name(value)
    message = str(err.value)
    assert message.startswith("job name must have 4 dot-separated parts")
    assert "app_name.app_ns.service_name.service_ns" in message
    assert f"got {parts} in {value!r}" in message


@pytest.mark.parametrize(
    "value, field",
    [
        ("a-1.b.c.d", "app_name"),
        ("a..c.d", "app_ns"),
        ("a.b.c_1.d", "service_name"),
        ("a.b.c.", "service_ns"),
        ("a.b.c.d\n", "service_ns"),
        (f"a.b.c.{'d' * 31}", "service_ns"),
    ],
)
def test_parse_job_name_names_the_bad_part(value, field):
    with pytest.raises(InvalidName) as err:
        parse_job_name(value)
    assert str(err.value).startswith(f"invalid job name {value!r}: {field} must be 1-30")


@pytest.mark.parametrize("value", [None, 42, b"a.b.c.d", ("a", "b", "c", "d")])
def test_parse_job_name_rejects_non_strings(value):
    with pytest.raises(InvalidName, match="^job name must be a string"):
        parse_job_name(value)


@given(name_parts, name_parts, name_parts, name_parts)
def test_format_and_parse_round_trip(a, b, c, d):
    text = format_job_name(a, b, c, d)
    assert text == f"{a}.{b}.{c}.{d}"
    assert parse_job_name(text) == JobName(a, b, c, d)
    assert str(parse_job_name(text)) == text
    assert is_valid_job_name(text)


def test_format_job_name_validates():
    assert format_job_name("X", "default", "X3", "default") == "X.default.X3.default"
    with pytest.raises(InvalidName, match="^service_name must be 1-30"):
        format_job_name("X", "default", "X.3", "default")
    with pytest.raises(InvalidName, match="^app_ns must be a string"):
        format_job_name("X", None, "X3", "default")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value, valid",
    [
        ("X.default.X1.default", True),
        ("a.b.c.d", True),
        ("a.b.c", False),
        ("a.b.c.d.e", False),
        ("a.b.c-d.e", False),
        ("X_default_X1_default", False),
        ("", False),
        (None, False),
        (1234, False),
    ],
)
def test_is_valid_job_name(value, valid):
    assert is_valid_job_name(value) is valid


@pytest.mark.parametrize(
    "plain, encoded",
    [
        ("X.default.X1.default", "X_default_X1_default"),
        ("10.30.1.30", "10_30_1_30"),
        ("fdff:2000::30", "fdff:2000::30"),  # IPv6 travels unchanged
        ("", ""),
    ],
)
def test_path_encoding(plain, encoded):
    assert encode_path(plain) == encoded
    assert decode_path(encoded) == plain


@given(name_parts, name_parts, name_parts, name_parts)
def test_decode_inverts_encode_for_job_names(a, b, c, d):
    job_name = f"{a}.{b}.{c}.{d}"
    assert "." not in encode_path(job_name)
    assert decode_path(encode_path(job_name)) == job_name


@pytest.mark.parametrize("function", [encode_path, decode_path])
@pytest.mark.parametrize("value", [None, 5, b"a.b"])
def test_path_encoding_rejects_non_strings(function, value):
    with pytest.raises(TypeError, match="path segment must be a string"):
        function(value)
