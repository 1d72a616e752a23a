"""HTTP error type of the service and the helpers that read request input.

Views raise `ApiError`; the app turns it (and every werkzeug HTTP error) into a JSON
body `{"error": <short name>, "reason": <what to fix>}` with the right status.
"""

from __future__ import annotations

from typing import Any

from flask import request


class ApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def json_object() -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying why it is not one."""
    body = request.get_json(silent=True, force=True)
    if body is None:
        raise ApiError(400, "request body must be JSON")
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def require_str(body: dict[str, Any], field: str, *, max_len: int = 256) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"field '{field}' is required and must be a non-empty string")
    if len(value) > max_len:
        raise ApiError(400, f"field '{field}' is longer than {max_len} characters")
    return value.strip()


def require_int(body: dict[str, Any], field: str, *, minimum: int = 0, maximum: int = 2**31) -> int:
    """An integer field; numeric strings are accepted (Oakestra sends some ports as strings)."""
    value = body.get(field)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"field '{field}' is required and must be an integer")
    if not minimum <= value <= maximum:
        raise ApiError(400, f"field '{field}' must be between {minimum} and {maximum}")
    return value


def path_int(value: str, name: str, *, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got '{value[:40]}'") from None
    if number < minimum:
        raise ApiError(400, f"{name} must be >= {minimum}")
    return number
