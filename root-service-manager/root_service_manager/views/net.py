"""`/api/net/*`: what Oakestra's system manager and the cluster service managers call.

Paths, methods and JSON field names are those of upstream (reference §2.1); job
names and IPv4 addresses travel in paths with '.' written as '_'. Success bodies are
JSON objects whose `message` is upstream's text; errors are `{"error", "reason"}`.
"""

from __future__ import annotations

import ipaddress

from flask import Blueprint, current_app, jsonify, request

from oakestra_net import api_token
from oakestra_net.addressing import Pool, PoolExhausted
from oakestra_net.log import get_logger
from oakestra_net.names import decode_path

from ..clusters import caller_address
from ..descriptor import read_descriptor
from ..errors import ApiError, json_object, path_int, require_int, require_str
from ..services import LOCATION_FIELDS, object_id, public_job

log = get_logger(__name__)

bp = Blueprint("net", __name__, url_prefix="/api/net")


def _root():
    return current_app.extensions["root"]


def _message(text: str, status: int = 200, **extra):
    return jsonify({"message": text, **extra}), status


# -- clusters -------------------------------------------------------------------


@bp.post("/cluster")
def register_cluster():
    body = json_object()
    cluster_id = require_str(body, "cluster_id")
    address = require_str(body, "cluster_address")
    port = require_int(body, "cluster_port", minimum=1, maximum=65535)
    known = _root().clusters.by_id(cluster_id)
    if known is not None and not api_token.guarded():
        _refuse_moving(known, address)
    cluster = _root().clusters.register(cluster_id, address, port)
    return _message("cluster registered", cluster=cluster)


def _refuse_moving(known: dict, address: str) -> None:
    """Without the API token, a registered cluster keeps its address: otherwise anyone could
    take over its pushes by registering its id again with an address of their own."""
    if caller_address(address) == known["cluster_address"]:
        return
    log.warning(
        "cluster re-registration from another address refused",
        cluster_id=known["cluster_id"],
        registered_address=known["cluster_address"],
        new_address=address[:100],
        caller=request.remote_addr,
    )
    raise ApiError(
        403,
        f"field 'cluster_address': cluster {known['cluster_id']} is registered at "
        f"{known['cluster_address']}; moving it needs the API token ({api_token.ENV_VAR})",
    )


@bp.delete("/interest/<job_name>")
def remove_interest(job_name: str):
    cluster = _calling_cluster()
    _root().clusters.remove_interest(cluster["cluster_id"], decode_path(job_name))
    return _message("deregistered")


def _calling_cluster() -> dict:
    cluster = _root().clusters.by_address(request.remote_addr)
    if cluster is None:
        raise ApiError(
            404, f"Cluster not registered: no cluster has the address {request.remote_addr}"
        )
    return cluster


# -- services and instances -----------------------------------------------------


@bp.post("/service/deploy")
def deploy_service():
    body = json_object()
    job_id = object_id(body.get("_id"))
    service = read_descriptor(body.get("deployment_descriptor"))
    job, created = _root().services.deploy_service(job_id, service)
    text = "Instance info added" if created else "Service already deployed, nothing changed"
    return _message(text, job_name=job["job_name"], service_ip_list=job["service_ip_list"])


@bp.delete("/service/<job_id>")
def remove_service(job_id: str):
    job = _root().services.remove_service(object_id(job_id))
    return _message("Job removed successfully", job_name=job["job_name"])


@bp.post("/instance/deploy")
def deploy_instance():
    body = json_object()
    instance = _root().services.deploy_instance(
        object_id(body.get("_id")),
        require_int(body, "instance_number"),
        require_str(body, "cluster_id"),
    )
    return _message("Instance info added", instance=instance)


@bp.delete("/<job_id>/<instance_number>")
def undeploy_instance(job_id: str, instance_number: str):
    number = path_int(instance_number, "instance_number", minimum=-1)
    removed = _root().services.undeploy_instance(object_id(job_id), number)
    numbers = [i["instance_number"] for i in removed]
    return _message("Instance info cleared", removed=numbers)


@bp.post("/service/net_deploy_status")
def net_deploy_status():
    body = json_object()
    job_id = object_id(body.get("job_id"), "job_id")
    reports = body.get("instances")
    if not isinstance(reports, list) or not reports or len(reports) > 10_000:
        raise ApiError(400, "field 'instances' must be a non-empty list of instance reports")
    checked = [_location_report(r) for r in reports]
    updated, unknown = _root().services.update_locations(job_id, checked)
    return _message("Status updated", updated=updated, unknown_instances=unknown)


def _location_report(report: object) -> dict:
    """One instance's location; a report with a null `namespace_ip` clears the location
    (the cluster sends that when the instance left its node)."""
    if not isinstance(report, dict):
        raise ApiError(400, "every entry of 'instances' must be a JSON object")
    number = require_int(report, "instance_number")
    if report.get("namespace_ip") is None:
        return {"instance_number": number, **dict.fromkeys(LOCATION_FIELDS)}
    return {
        "instance_number": number,
        "namespace_ip": _ip(report, "namespace_ip", 4),
        "namespace_ip_v6": _ip(report, "namespace_ip_v6", 6, optional=True),
        "host_ip": require_str(report, "host_ip"),
        "host_port": require_int(report, "host_port", maximum=65535),
    }


def _ip(body: dict, field: str, version: int, *, optional: bool = False) -> str:
    value = body.get(field)
    if optional and value in (None, "", "<nil>"):
        return ""
    try:
        if not isinstance(value, str):  # ip_address() would take 5 for 0.0.0.5
            raise TypeError(field)
        address = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise ApiError(400, f"field '{field}' must be an IPv{version} address") from None
    if address.version != version:
        raise ApiError(400, f"field '{field}' must be an IPv{version} address")
    return str(address)


# -- table queries --------------------------------------------------------------


@bp.get("/service/<job_name>/instances")
def table_query_by_name(job_name: str):
    cluster = _calling_cluster_for_query()
    name = decode_path(job_name)
    return _answer_query(cluster, _root().services.find_by_name(name), f"service {name}")


@bp.get("/service/ip/<service_ip>/instances")
def table_query_by_ip(service_ip: str):
    cluster = _calling_cluster_for_query()
    try:
        address = str(ipaddress.ip_address(decode_path(service_ip)))
    except ValueError:
        raise ApiError(400, f"'{service_ip[:64]}' is not an IP address") from None
    return _answer_query(cluster, _root().services.find_by_ip(address), f"service IP {address}")


def _calling_cluster_for_query() -> dict:
    cluster = _root().clusters.by_address(request.remote_addr)
    if cluster is None:
        raise ApiError(400, "Invalid cluster address, is the cluster registered?")
    return cluster


def _answer_query(cluster: dict, job: dict | None, what: str):
    if job is None:
        raise ApiError(404, f"no {what}")
    _root().clusters.add_interest(cluster["cluster_id"], job["job_name"])
    return jsonify(public_job(job))


# -- node subnets ---------------------------------------------------------------


@bp.get("/subnet")
def new_subnet():
    allocator = _root().allocator
    owner = {"kind": "subnet"}
    try:
        v4 = allocator.reserve(Pool.SUBNET_V4, owner)
    except PoolExhausted as err:
        raise ApiError(503, f"no node subnet left: {err}") from None
    try:
        v6 = allocator.reserve(Pool.SUBNET_V6, owner)
    except PoolExhausted as err:
        allocator.release(Pool.SUBNET_V4, v4)
        raise ApiError(503, f"no IPv6 node subnet left: {err}") from None
    return jsonify({"subnet_addr": v4, "subnet_addr_v6": v6})


@bp.delete("/subnet")
def release_subnet():
    """Ours, not upstream's: a cluster gives a node's subnet back (node subnet DELETE)."""
    body = json_object()
    allocator = _root().allocator
    released = {
        "subnet_addr": allocator.release(Pool.SUBNET_V4, body.get("subnet_addr")),
        "subnet_addr_v6": allocator.release(Pool.SUBNET_V6, body.get("subnet_addr_v6")),
    }
    return _message("subnet released", released=released)
