"""HTTP API for the node engine: the routes and JSON the node engine already speaks.

Served on the unix socket (default /etc/netmanager/netmanager.sock) and optionally a
TCP port. Bad JSON or fields → 400 `{"error", "reason"}` and nothing changes; every
call before `/register` → 400. `GET /status` and `GET /metrics` are ours.

Bodies are at most MAX_BODY_BYTES and nest at most MAX_JSON_DEPTH deep: the depth is
checked on the raw bytes before parsing, because a deeply nested body made the JSON
parser raise RecursionError (a 500 on every POST). The node engine's bodies are flat.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, Response, jsonify, request

from net_manager.control.daemon import DaemonError, NodeDaemon
from net_manager.metrics import metrics_text
from oakestra_net.http_errors import register_json_errors
from oakestra_net.log import get_logger

log = get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
_OPEN, _CLOSE, _QUOTE, _ESCAPE = frozenset(b"[{"), frozenset(b"]}"), ord('"'), ord("\\")


def json_depth(data: bytes, limit: int) -> int:
    """How deep arrays/objects nest in `data` (strings skipped), counting stops past `limit`."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _ESCAPE:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif byte in _CLOSE:
            depth -= 1
    return deepest


def _body() -> dict[str, Any]:
    data = request.get_data(cache=True)
    if json_depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise DaemonError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise DaemonError(400, "request body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    value = body.get(name, default)
    if value is ...:
        raise DaemonError(400, f"field '{name}' is required")
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise DaemonError(400, f"field '{name}' must be of type {kind.__name__}")
    return value


def create_app(daemon: NodeDaemon) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.errorhandler(DaemonError)
    def refused(err: DaemonError):
        log.info("call refused", path=request.path, status=err.status, reason=err.reason)
        return jsonify({"error": "refused", "reason": err.reason}), err.status

    register_json_errors(app)

    @app.post("/register")
    def register():
        body = _body()
        daemon.register(_field(body, "client_id", str), _field(body, "cluster_address", str, ""))
        return "", 200

    @app.post("/container/deploy")
    def container_deploy():
        body = _body()
        answer = daemon.deploy_container(
            _field(body, "pid", int),
            _field(body, "serviceName", str),
            _field(body, "instanceNumber", int),
            _field(body, "portMappings", str, ""),
        )
        return jsonify(answer)

    @app.post("/container/undeploy")
    @app.post("/docker/undeploy")
    def container_undeploy():
        body = _body()
        daemon.undeploy(_field(body, "serviceName", str), _field(body, "instanceNumber", int))
        return "", 200

    @app.post("/unikernel/deploy")
    def unikernel_deploy():
        body = _body()  # `pid` (0 from the node engine) is ignored, as upstream
        answer = daemon.deploy_unikernel(
            _field(body, "serviceName", str),
            _field(body, "instanceNumber", int),
            _field(body, "portMappings", str, ""),
        )
        return jsonify(answer)

    @app.post("/unikernel/undeploy")
    def unikernel_undeploy():
        body = _body()
        daemon.undeploy_unikernel(
            _field(body, "serviceName", str), _field(body, "instanceNumber", int)
        )
        return "", 200

    @app.get("/status")
    def status():
        return jsonify(daemon.status())

    @app.get("/metrics")
    def metrics():
        return Response(metrics_text(daemon.status), mimetype="text/plain; version=0.0.4")

    return app
