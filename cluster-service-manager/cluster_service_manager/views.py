"""HTTP endpoints: `/api/net/*` of reference §2.2, plus `/healthz` and `/metrics`.

Views read and validate input, call `Deployments`, and answer JSON: success bodies
carry upstream's text in `message`; errors are `{"error", "reason"}` with 400 for bad
input (plus `field`, from the request models of `schemas`), 404 for an unknown job,
503 when the root cannot be reached and 502 when it refused, raised as the shared
`ApiError` and answered by the shared handler.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from oakestra_net import store
from oakestra_net.http_errors import ApiError
from oakestra_net.http_input import json_body, path_params
from oakestra_net.log import get_logger
from oakestra_net.names import decode_path

from .metrics import CONTENT_TYPE
from .root_client import NotFound, RootRejected, RootUnavailable
from .schemas import JOB_UPDATE_REASONS, Deployment, JobNamePath, JobUpdate

log = get_logger(__name__)

net = Blueprint("net", __name__, url_prefix="/api/net")
ops = Blueprint("ops", __name__)


def _parts():
    return current_app.extensions["cluster_service_manager"]


def _root_error(err: Exception, what: str) -> ApiError:
    if isinstance(err, NotFound):
        return ApiError(404, f"the root does not know {what}")
    if isinstance(err, RootUnavailable):
        return ApiError(503, f"root service manager unavailable: {err}")
    return ApiError(502, f"root service manager refused: {err}")


# -- /api/net ---------------------------------------------------------------------------


@net.post("/deployment")
def deployment():
    body = json_body(Deployment)
    name = body.job_name
    try:
        job = _parts().deployments.deploy(name, body.placement())
    except (NotFound, RootUnavailable, RootRejected) as err:
        raise _root_error(err, f"job {name}") from None
    answer = {"message": "job stored succesfully", "job_name": name}
    return jsonify({**answer, "instances": len(job.instances)})


@net.delete("/deployment/<job_name>")
def remove_deployment(job_name: str):
    name = path_params(JobNamePath, job_name=decode_path(job_name)).job_name
    if not _parts().deployments.remove(name):
        raise ApiError(404, f"job {name} is not cached here")
    return jsonify({"message": "job removed succesfully", "job_name": name})


@net.post("/job/update")
def job_update():
    body = json_body(JobUpdate, reasons=JOB_UPDATE_REASONS)
    _parts().deployments.root_update(body.job_name, body.instance_number, body.type)
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
