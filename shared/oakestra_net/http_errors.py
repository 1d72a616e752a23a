"""JSON error bodies for every Flask app of the project: `{"error", "reason"[, "field"]}`.

`ApiError` is the one error type root, cluster and net manager raise for an answer they
refuse (404, 409, 503 …); `register_json_errors` is the one handler registration. Werkzeug's
HTTP errors (404, 405, 413 …) keep their status; `InvalidInput` becomes a 400 naming the
field; anything unexpected is logged with its traceback and answered 500, so a
client never gets an HTML page. Every 4xx answer is logged through a rate limit per
(endpoint, status), so a client sending junk in a loop cannot flood the log.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from oakestra_net.log import RateLimitedLog, get_logger
from oakestra_net.validation import InvalidInput

log = get_logger(__name__)
rejections = RateLimitedLog(log)


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(status: int, reason: str, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": status_phrase(status), "reason": reason}
    if field is not None:
        body["field"] = field
    return body


class ApiError(Exception):
    """A request refused with HTTP `status` and a `reason` saying what to fix.

    The body's "error" is the status's phrase unless a subclass names it (`label`).
    """

    label: str | None = None

    def __init__(self, status: int, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.field = field

    def body(self) -> dict[str, Any]:
        body = error_body(self.status, self.reason, self.field)
        if self.label is not None:
            body["error"] = self.label
        return body


def register_json_errors(
    app: Any, *, rewrite: Callable[[ApiError], ApiError] | None = None
) -> None:
    """`rewrite`, if given, may turn an ApiError into another before it is answered."""
    from flask import jsonify, request
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(ApiError)
    def api_error(err: ApiError):
        if rewrite is not None:
            err = rewrite(err)
        if err.status >= 500:
            log.warning(
                "request failed",
                path=request.path[:200],
                status=err.status,
                reason=err.reason[:200],
            )
        return jsonify(err.body()), err.status

    @app.errorhandler(InvalidInput)
    def invalid_input(err: InvalidInput):
        return jsonify(error_body(err.status, str(err), err.field)), err.status

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        return jsonify({"error": err.name, "reason": err.description}), err.code

    @app.errorhandler(Exception)
    def unexpected(err: Exception):
        log.exception("unexpected error", path=request.path[:200])
        return jsonify({"error": "Internal Server Error", "reason": str(err)[:200]}), 500

    @app.after_request
    def log_rejection(response):
        if 400 <= response.status_code < 500:
            endpoint = request.endpoint or "unknown"
            reason = (response.get_json(silent=True) or {}).get("reason", "")
            rejections.info(
                f"{endpoint} {response.status_code}",
                "request rejected",
                method=request.method[:16],
                path=request.path[:120],
                status=response.status_code,
                reason=str(reason)[:200],
            )
        return response
