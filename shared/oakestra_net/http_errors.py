"""JSON error bodies for every Flask app of the project: `{"error", "reason"}`.

Werkzeug's HTTP errors (404, 405, bad JSON …) keep their status; anything unexpected is
logged with its traceback and answered 500, so a client never gets an HTML page.
"""

from __future__ import annotations

from typing import Any

from oakestra_net.log import get_logger

log = get_logger(__name__)


def register_json_errors(app: Any) -> None:
    from flask import jsonify, request
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        return jsonify({"error": err.name, "reason": err.description}), err.code

    @app.errorhandler(Exception)
    def unexpected(err: Exception):
        log.exception("unexpected error", path=request.path)
        return jsonify({"error": "Internal Server Error", "reason": str(err)[:200]}), 500
