"""`/api/net/*`: what Oakestra's system manager and the cluster service managers call.

Paths, methods and JSON field names are those of upstream (reference §2.1); job
names and IPv4 addresses travel in paths with '.' written as '_'. Success bodies are
JSON objects whose `message` is upstream's text; errors are `{"error", "reason"}`.
"""

from __future__ import annotations

from bson import ObjectId
from flask import Blueprint, current_app, jsonify, request

from oakestra_net import api_token
from oakestra_net.addressing import Pool, PoolExhausted
from oakestra_net.http_errors import ApiError
from oakestra_net.http_input import json_body, json_object, path_params
from oakestra_net.log import get_logger
from oakestra_net.names import InvalidName, decode_path, parse_job_name
from oakestra_net.validation import InvalidInput, parse

from ..clusters import caller_address
from ..descriptor import conflicting_choice
from ..schemas import (
    ClusterRegistration,
    DeployStatus,
    InstanceDeploy,
    InstancePath,
    JobIdPath,
    LocationReport,
    ServiceDeploy,
    ServiceIpPath,
    SubnetRelease,
)
from ..services import LOCATION_FIELDS, public_job

log = get_logger(__name__)

bp = Blueprint("net", __name__, url_prefix="/api/net")


def _root():
    return current_app.extensions["root"]


def _message(text: str, status: int = 200, **extra):
    return jsonify({"message": text, **extra}), status


# -- clusters -------------------------------------------------------------------


@bp.post("/cluster")
def register_cluster():
    body = json_body(ClusterRegistration)
    known = _root().clusters.by_id(body.cluster_id)
    if known is not None and not api_token.guarded():
        _refuse_moving(known, body.cluster_address)
    cluster = _root().clusters.register(body.cluster_id, body.cluster_address, body.cluster_port)
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
    _root().clusters.remove_interest(cluster["cluster_id"], _job_name(job_name))
    return _message("deregistered")


def _calling_cluster() -> dict:
    cluster = _root().clusters.by_address(request.remote_addr)
    if cluster is None:
        raise ApiError(
            404, f"Cluster not registered: no cluster has the address {request.remote_addr}"
        )
    return cluster


def _job_name(path_segment: str) -> str:
    try:
        return str(parse_job_name(decode_path(path_segment)))
    except InvalidName as err:
        raise InvalidInput("job_name", str(err)) from None


# -- services and instances -----------------------------------------------------


@bp.post("/service/deploy")
def deploy_service():
    raw = json_object()
    body = parse(ServiceDeploy, raw)
    service = body.deployment_descriptor.to_request(raw["deployment_descriptor"])
    job, created = _root().services.deploy_service(ObjectId(body.id), service)
    if not created and (conflict := conflicting_choice(job, service)):
        raise ApiError(
            409, f"{job['job_name']} is already deployed with other addresses: {conflict}"
        )
    text = "Instance info added" if created else "Service already deployed, nothing changed"
    return _message(text, job_name=job["job_name"], service_ip_list=job["service_ip_list"])


@bp.delete("/service/<job_id>")
def remove_service(job_id: str):
    path = path_params(JobIdPath, job_id=job_id)
    job = _root().services.remove_service(ObjectId(path.job_id))
    return _message("Job removed successfully", job_name=job["job_name"])


@bp.post("/instance/deploy")
def deploy_instance():
    body = json_body(InstanceDeploy)
    instance = _root().services.deploy_instance(
        ObjectId(body.id), body.instance_number, body.cluster_id
    )
    return _message("Instance info added", instance=instance)


@bp.delete("/<job_id>/<instance_number>")
def undeploy_instance(job_id: str, instance_number: str):
    path = path_params(InstancePath, job_id=job_id, instance_number=instance_number)
    removed = _root().services.undeploy_instance(ObjectId(path.job_id), path.instance_number)
    numbers = [i["instance_number"] for i in removed]
    return _message("Instance info cleared", removed=numbers)


@bp.post("/service/net_deploy_status")
def net_deploy_status():
    body = json_body(DeployStatus)
    checked = [_location(report) for report in body.instances]
    updated, unknown = _root().services.update_locations(ObjectId(body.job_id), checked)
    return _message("Status updated", updated=updated, unknown_instances=unknown)


def _location(report: LocationReport) -> dict:
    if report.namespace_ip is None:
        return {"instance_number": report.instance_number, **dict.fromkeys(LOCATION_FIELDS)}
    return {
        "instance_number": report.instance_number,
        "namespace_ip": report.namespace_ip,
        "namespace_ip_v6": report.namespace_ip_v6 or "",
        "host_ip": report.host_ip,
        "host_port": report.host_port,
    }


# -- table queries --------------------------------------------------------------


@bp.get("/service/<job_name>/instances")
def table_query_by_name(job_name: str):
    cluster = _calling_cluster_for_query()
    name = _job_name(job_name)
    return _answer_query(cluster, _root().services.find_by_name(name), f"service {name}")


@bp.get("/service/ip/<service_ip>/instances")
def table_query_by_ip(service_ip: str):
    cluster = _calling_cluster_for_query()
    address = path_params(ServiceIpPath, service_ip=decode_path(service_ip)).service_ip
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
    """A node subnet (v4 and v6); it belongs to the calling cluster, if it is registered."""
    allocator = _root().allocator
    caller = _root().clusters.by_address(request.remote_addr)
    owner = {"kind": "subnet", "cluster_id": caller["cluster_id"] if caller else None}
    try:
        v4, v6 = allocator.reserve_all([(Pool.SUBNET_V4, owner), (Pool.SUBNET_V6, owner)])
    except PoolExhausted as err:
        raise ApiError(503, f"no node subnet left: {err}") from None
    return jsonify({"subnet_addr": v4, "subnet_addr_v6": v6})


@bp.delete("/subnet")
def release_subnet():
    """Ours, not upstream's: a cluster gives a node's subnet back (node subnet DELETE).

    Only subnets handed out to the calling cluster (or to no known cluster) can be
    released; an unknown or foreign one is a 404 and nothing is released."""
    body = json_body(SubnetRelease)
    allocator = _root().allocator
    caller = _root().clusters.by_address(request.remote_addr)
    caller_id = caller["cluster_id"] if caller else None
    given = [
        (field, pool, address)
        for field, pool, address in (
            ("subnet_addr", Pool.SUBNET_V4, body.subnet_addr),
            ("subnet_addr_v6", Pool.SUBNET_V6, body.subnet_addr_v6),
        )
        if address is not None
    ]
    for field, pool, address in given:
        owner = allocator.owner_of(pool, address)
        if owner is None or owner.get("kind") != "subnet":
            raise ApiError(404, f"field '{field}': {address} is not a node subnet handed out")
        if owner.get("cluster_id") not in (None, caller_id):
            raise ApiError(404, f"field '{field}': {address} belongs to another cluster")
    released = {field: allocator.release(pool, address) for field, pool, address in given}
    return _message("subnet released", released=released)
