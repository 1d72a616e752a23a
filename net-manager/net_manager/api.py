"""HTTP API for the node engine: the routes and JSON the node engine already speaks.

Served on the unix socket (default /etc/netmanager/netmanager.sock) and optionally a
TCP port. Bad JSON or fields → 400 `{"error", "reason"}` and nothing changes; every
call before `/register` → 400. `GET /status` and `GET /metrics` are ours.

Bodies are at most MAX_BODY_BYTES and are decoded by `oakestra_net.validation.load_json`
(nesting limited, never a RecursionError): the node engine's bodies are flat.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request

from net_manager.control.daemon import DaemonError, NodeDaemon
from net_manager.metrics import metrics_text
from oakestra_net.http_errors import register_json_errors
from oakestra_net.log import get_logger
from oakestra_net.validation import InvalidInput, load_json

log = get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024


def _body() -> dict[str, Any]:
    try:
        body = load_json(request.get_data(cache=True))
    except InvalidInput as err:
        raise DaemonError(400, str(err)) from None
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
