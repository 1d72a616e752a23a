"""Reading a Flask request into a pydantic model (the web side of `oakestra_net.validation`).

`json_body` reads the body as a JSON object (bounded in size and depth) and validates it;
`path_params` validates URL path segments the same way. Both raise `InvalidInput`, which
`register_json_errors` answers as a 400 naming the field.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from oakestra_net.validation import InvalidInput, load_json, parse

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 16 * 1024 * 1024


def json_object(*, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request body as a JSON object, whatever its content type says."""
    from flask import request

    if request.content_length is not None and request.content_length > max_bytes:
        raise InvalidInput("", f"body is larger than {max_bytes} bytes", status=413)
    request.max_content_length = max_bytes  # a chunked body stops being read past it
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise InvalidInput("", "request body must be a JSON object, got nothing")
    data = load_json(raw)
    if not isinstance(data, dict):
        raise InvalidInput("", "request body must be a JSON object")
    return data


def json_body(model: type[M], *, reasons: dict[str, str] | None = None) -> M:
    return parse(model, json_object(), reasons=reasons)


def path_params(model: type[M], **segments: str) -> M:
    return parse(model, segments)
