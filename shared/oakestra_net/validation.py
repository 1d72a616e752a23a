"""Reading untrusted JSON into pydantic models: one mechanism for every HTTP boundary.

Pure, no web framework: `load_json` turns request bytes into Python data with bounded
size, depth and integer length, `parse` validates that data against a pydantic model,
and both raise `InvalidInput` naming the field and saying what is wrong. The constrained
types below (`Port`, `InstanceNumber`, `IpText` …) are the building blocks of the
request models of the root and the cluster; their checks are ASCII-only on purpose:
Python's int() reads "١" as 1 and "--1" is not a number anyone meant.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, ValidationError

from oakestra_net.names import parse_job_name

__all__ = [
    "MAX_DEPTH",
    "MAX_INSTANCE_NUMBER",
    "MAX_STRING_LENGTH",
    "InstanceNumber",
    "InvalidInput",
    "IpText",
    "IpV4Text",
    "IpV6Text",
    "JobNameText",
    "ObjectIdText",
    "Port",
    "ShortText",
    "ascii_int",
    "ascii_int_type",
    "check_tree",
    "load_json",
    "parse",
]

# Deeper than this is no real payload: MongoDB stops at 100 levels, the descriptor
# of Oakestra at about 6.
MAX_DEPTH = 32
MAX_STRING_LENGTH = 256
# Instance numbers are small counters upstream; 2**31 - 1 is Go's int32 and any
# bigger number is a mistake or an attack.
MAX_INSTANCE_NUMBER = 2**31 - 1
_INT_TEXT = re.compile(r"-?[0-9]{1,19}")
_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")
_M = TypeVar("_M", bound=BaseModel)


class InvalidInput(ValueError):
    """Bad input from outside: `field` is the dotted path of the culprit ("" = the body)."""

    def __init__(self, field: str, reason: str, status: int = 400) -> None:
        super().__init__(f"field '{field}': {reason}" if field else reason)
        self.field = field
        self.reason = reason
        self.status = status


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _short(path: str) -> str:
    return path if len(path) <= 120 else f"{path[:100]}…{path[-15:]}"


def load_json(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode JSON text; InvalidInput("", ...) when it is not JSON, nested too deeply,
    or holds an integer of more than 4300 digits or a string that is not Unicode."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise InvalidInput("", f"body is nested too deeply (at most {max_depth} levels)") from None
    except UnicodeDecodeError:
        raise InvalidInput("", "body is not valid UTF-8") from None
    except ValueError as err:  # JSONDecodeError, and ints beyond Python's digit limit
        reason = f"body must be a JSON object (not valid JSON: {str(err)[:120]})"
        raise InvalidInput("", reason) from None
    check_tree(value, max_depth=max_depth)
    return value


def check_tree(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Walk decoded JSON without recursion: depth and every string (key or value) checked."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > max_depth:
                raise InvalidInput(
                    _short(path), f"is nested too deeply (at most {max_depth} levels)"
                )
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                child_path = _join(path, key)
                if isinstance(key, str):
                    _check_text(key, child_path)
                stack.append((child, child_path, depth + 1))
        elif isinstance(node, str):
            _check_text(node, path)


def _check_text(text: str, path: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \\ud800 escape
        raise InvalidInput(_short(path), "is not valid Unicode (lone surrogate)") from None


def parse(model: type[_M], data: Any, *, reasons: dict[str, str] | None = None) -> _M:
    """`data` validated as `model`; the first error becomes InvalidInput naming its field.

    `reasons` maps a field name to a text that starts the reason of its errors (for
    clients that look for upstream's wording, e.g. "Invalid instancenum").
    """
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _first_error(err, reasons or {}) from None


def _first_error(err: ValidationError, reasons: dict[str, str]) -> InvalidInput:
    first = err.errors(include_url=False, include_input=False)[0]
    path = ""
    for key in first["loc"]:
        path = _join(path, key)
    text = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        text = "is required"
    elif first["type"] == "extra_forbidden":
        text = "is not a known field"
    top = str(first["loc"][0]) if first["loc"] else ""
    if top in reasons:
        text = f"{reasons[top]}: {text}"
    if not path:
        return InvalidInput("", f"body {text[:1].lower()}{text[1:]}")
    return InvalidInput(_short(path), text)


# -- constrained types ------------------------------------------------------------------


def ascii_int(value: Any) -> Any:
    """Decimal ASCII text ("-12", at most 19 digits) -> int; anything else unchanged, so
    a strict int check refuses it. JSON booleans are refused here already."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, got a boolean")
    if isinstance(value, str):
        if not _INT_TEXT.fullmatch(value):
            raise ValueError(f"must be an integer written in ASCII digits, got {_show(value)}")
        return int(value)
    return value


def _show(value: str) -> str:
    return repr(value) if len(value) <= 40 else f"{value[:30]!r}… ({len(value)} characters)"


def _ip(version: int | None) -> Callable[[str], str]:
    kind = {4: "an IPv4 address", 6: "an IPv6 address", None: "an IP address"}[version]

    def check(value: str) -> str:
        try:
            if "%" in value:  # a scoped IPv6 address names a local link
                raise ValueError(value)
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"must be {kind}, got {_show(value)}") from None
        if version is not None and address.version != version:
            raise ValueError(f"must be {kind}, got {_show(value)}")
        return str(address)

    return check


def _job_name(value: object) -> str:
    return str(parse_job_name(value))  # InvalidName is a ValueError naming the problem


def _object_id(value: str) -> str:
    if not _OBJECT_ID.fullmatch(value):
        raise ValueError(f"must be a 24-character hex object id, got {_show(value)}")
    return value.lower()


_Text = Annotated[str, Field(strict=True, max_length=MAX_STRING_LENGTH)]
ShortText = Annotated[
    str,
    Field(strict=True, min_length=1, max_length=MAX_STRING_LENGTH, pattern=r"\S"),
    AfterValidator(str.strip),
]
IpText = Annotated[_Text, AfterValidator(_ip(None)), Field(description="an IPv4 or IPv6 address")]
IpV4Text = Annotated[_Text, AfterValidator(_ip(4)), Field(json_schema_extra={"format": "ipv4"})]
IpV6Text = Annotated[_Text, AfterValidator(_ip(6)), Field(json_schema_extra={"format": "ipv6"})]
ObjectIdText = Annotated[
    _Text, AfterValidator(_object_id), Field(json_schema_extra={"pattern": _OBJECT_ID.pattern})
]
JobNameText = Annotated[object, AfterValidator(_job_name)]


def ascii_int_type(low: int, high: int, description: str | None = None) -> Any:
    """An int in low..high, given as a JSON integer or ASCII decimal text."""
    return Annotated[
        int,
        Field(strict=True, ge=low, le=high, description=description),
        BeforeValidator(ascii_int),
    ]


Port = ascii_int_type(1, 65535)
InstanceNumber = ascii_int_type(0, MAX_INSTANCE_NUMBER)
