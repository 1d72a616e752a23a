"""HTTP endpoints: `/api/net/*` of reference §2.2, plus `/healthz` and `/metrics`.

Views read and validate input, call `Deployments`, and answer JSON: success bodies
carry upstream's text in `message`; errors are `{"error", "reason"}` with 400 for bad
input, 404 for an unknown job, 503 when the root cannot be reached and 502 when it
refused. The app factory turns `ApiError` into those bodies.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from oakestra_net import store, topics
from oakestra_net.log import get_logger
from oakestra_net.names import InvalidName, decode_path, parse_job_name

from .deployments import UPDATE_TYPES
from .metrics import CONTENT_TYPE
from .root_client import NotFound, RootRejected, RootUnavailable

log = get_logger(__name__)

net = Blueprint("net", __name__, url_prefix="/api/net")
ops = Blueprint("ops", __name__)

MAX_INSTANCE_NUMBER = 2**63 - 1


class ApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def response(self) -> tuple[Response, int]:
        body = {"error": HTTPStatus(self.status).phrase, "reason": self.reason}
        return jsonify(body), self.status


def _parts():
    return current_app.extensions["cluster_service_manager"]


def _json_object() -> dict[str, Any]:
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _job_name(value: Any, field: str = "job_name") -> str:
    try:
        return str(parse_job_name(value))
    except InvalidName as err:
        raise ApiError(400, f"field '{field}': {err}") from None


def _root_error(err: Exception, what: str) -> ApiError:
    if isinstance(err, NotFound):
        return ApiError(404, f"the root does not know {what}")
    if isinstance(err, RootUnavailable):
        return ApiError(503, f"root service manager unavailable: {err}")
    return ApiError(502, f"root service manager refused: {err}")


# -- /api/net ---------------------------------------------------------------------------


@net.post("/deployment")
def deployment():
    body = _json_object()
    name = _job_name(body.get("job_name"))
    try:
        job = _parts().deployments.deploy(name, _placement(body))
    except (NotFound, RootUnavailable, RootRejected) as err:
        raise _root_error(err, f"job {name}") from None
    body = {"message": "job stored succesfully", "job_name": name}
    return jsonify({**body, "instances": len(job["instance_list"])})


def _placement(body: dict[str, Any]) -> tuple[int, str] | None:
    """Optional `instance_number` + `worker_id`: where the orchestrator scheduled the
    instance (Oakestra's cluster manager sends only `job_name`)."""
    number, node_id = body.get("instance_number"), body.get("worker_id")
    if number is None and node_id is None:
        return None
    if (
        isinstance(number, bool)
        or not isinstance(number, int)
        or not 0 <= number <= MAX_INSTANCE_NUMBER
    ):
        raise ApiError(400, "field 'instance_number': must be an integer >= 0 with 'worker_id'")
    try:
        topics.node_topic(node_id, topics.SERVICE_DEPLOYED)
    except topics.InvalidTopic as err:
        raise ApiError(400, f"field 'worker_id': {err}") from None
    return number, node_id


@net.delete("/deployment/<job_name>")
def remove_deployment(job_name: str):
    name = _job_name(decode_path(job_name), "job name in the path")
    if not _parts().deployments.remove(name):
        raise ApiError(404, f"job {name} is not cached here")
    return jsonify({"message": "job removed succesfully", "job_name": name})


@net.post("/job/update")
def job_update():
    body = _json_object()
    name = _job_name(body.get("job_name"))
    number = body.get("instance_number")
    if isinstance(number, bool) or not isinstance(number, int):
        raise ApiError(400, "Invalid instancenum: field 'instance_number' must be an integer")
    if not -1 <= number <= MAX_INSTANCE_NUMBER:
        raise ApiError(400, f"Invalid instancenum: {number} is below -1 or too large")
    kind = body.get("type")
    if kind not in UPDATE_TYPES:
        raise ApiError(400, f"Invalid type: field 'type' must be one of {', '.join(UPDATE_TYPES)}")
    _parts().deployments.root_update(name, number, kind)
    return jsonify({"message": "update notification received"})


# -- operations -------------------------------------------------------------------------


@ops.get("/healthz")
def healthz():
    parts = _parts()
    try:
        parts.db.command("ping")
        store_ok = True
    except Exception as err:  # noqa: BLE001 - health reports, it does not raise
        log.warning("store ping failed", reason=str(err))
        store_ok = False
    mqtt_ok = parts.endpoint is not None and parts.endpoint.connected
    body = {
        "status": "ok" if store_ok and mqtt_ok else "unhealthy",
        "broker": "connected" if mqtt_ok else "disconnected",
        "store": ("embedded" if store.is_embedded(parts.db) else "mongodb") if store_ok else "down",
        "pending_root_work": parts.lanes.pending(),
    }
    return jsonify(body), 200 if store_ok and mqtt_ok else 503


@ops.get("/metrics")
def metrics():
    return Response(_parts().metrics.render(), content_type=CONTENT_TYPE)
