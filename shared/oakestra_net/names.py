"""Job names: validation, parsing and the `.`<->`_` encoding used in URL paths.

A job name is `app_name.app_ns.service_name.service_ns`, each part 1-30 ASCII letters or
digits. Which descriptor fields feed the parts, and turning an
`InvalidName` into an HTTP 400 or a dropped message, is left to the callers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

NAME_PART_RE = re.compile(r"^[a-zA-Z0-9]{1,30}$")

_JOB_NAME_FORMAT = "app_name.app_ns.service_name.service_ns"
MAX_REMEMBERED_NAMES = 100_000
_VALID_NAMES: set[str] = set()  # names is_valid_job_name accepted


class InvalidName(ValueError):
    """A name part or job name that breaks the naming rules; the message says which and why."""


def _show(value: object) -> str:
    """repr() of user input, shortened so a huge value cannot flood an error message."""
    text = repr(value)
    return text if len(text) <= 100 else f"{text[:80]}...{text[-15:]}"


def validate_name_part(value: object, field: str) -> str:
    """Return `value` if it is a valid name part, else raise InvalidName naming `field`."""
    if not isinstance(value, str):
        raise InvalidName(f"{field} must be a string, got {type(value).__name__} {_show(value)}")
    # fullmatch: with plain match, `$` would accept a trailing newline.
    if NAME_PART_RE.fullmatch(value) is None:
        raise InvalidName(f"{field} must be 1-30 letters or digits, got {_show(value)}")
    return value


@dataclass(frozen=True)
class JobName:
    """A valid job name; constructing one with an invalid part raises InvalidName."""

    app_name: str
    app_ns: str
    service_name: str
    service_ns: str

    def __post_init__(self) -> None:
        for part in fields(self):
            validate_name_part(getattr(self, part.name), part.name)

    def __str__(self) -> str:
        return f"{self.app_name}.{self.app_ns}.{self.service_name}.{self.service_ns}"


def parse_job_name(value: object) -> JobName:
    """Parse `app_name.app_ns.service_name.service_ns`; raise InvalidName otherwise."""
    if not isinstance(value, str):
        raise InvalidName(f"job name must be a string, got {type(value).__name__} {_show(value)}")
    parts = value.split(".")
    if len(parts) != 4:
        raise InvalidName(
            f"job name must have 4 dot-separated parts ({_JOB_NAME_FORMAT}), "
            f"got {len(parts)} in {_show(value)}"
        )
    try:
        return JobName(*parts)
    except InvalidName as err:
        raise InvalidName(f"invalid job name {_show(value)}: {err}") from None


def format_job_name(app_name: str, app_ns: str, service_name: str, service_ns: str) -> str:
    """Build the job name string from its four parts, validating each (InvalidName)."""
    return str(JobName(app_name, app_ns, service_name, service_ns))


def is_valid_job_name(value: object) -> bool:
    """True if `value` is a job name string that parse_job_name accepts.

    Valid names are remembered (bounded): the cluster checks the name of every table
    query, and nodes ask for the same few names again and again.
    """
    if type(value) is str and value in _VALID_NAMES:
        return True
    try:
        parse_job_name(value)
    except InvalidName:
        return False
    if type(value) is str:
        if len(_VALID_NAMES) >= MAX_REMEMBERED_NAMES:
            _VALID_NAMES.clear()
        _VALID_NAMES.add(value)
    return True


def encode_path(value: str) -> str:
    """Job name or IPv4 address as it travels in a URL path: `.` becomes `_`."""
    if not isinstance(value, str):
        raise TypeError(f"path segment must be a string, got {type(value).__name__}")
    return value.replace(".", "_")


def decode_path(value: str) -> str:
    """Inverse of encode_path: `_` becomes `.`; IPv6 addresses pass unchanged."""
    if not isinstance(value, str):
        raise TypeError(f"path segment must be a string, got {type(value).__name__}")
    return value.replace("_", ".")
