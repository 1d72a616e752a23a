"""`/api/pubnet/service/netinfo/*`: the public, JWT-protected view of service addresses.

Answers carry service and instance IPs only, never node or namespace addresses.
While no JWT key is known these routes answer 503; everything else keeps working.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from oakestra_net.addressing import Pool
from oakestra_net.http_errors import ApiError
from oakestra_net.http_input import path_params
from oakestra_net.names import decode_path

from ..jwt_keys import TokenRejected
from ..schemas import PreviewQuery, ServiceIpPath

bp = Blueprint("netinfo", __name__, url_prefix="/api/pubnet/service/netinfo")

NAME_FIELDS = ("applicationID", "app_ns", "app_name", "service_ns", "service_name")
INSTANCE_FIELDS = ("cluster_id", "instance_number", "instance_ip", "instance_ip_v6")


@bp.before_request
def require_token():
    try:
        current_app.extensions["root"].keys.check(request.headers.get("Authorization"))
    except LookupError:
        raise ApiError(503, "the JWT public key is not known yet; retry shortly") from None
    except TokenRejected as err:
        raise ApiError(401, str(err)) from None


@bp.get("/<service_name>")
def by_name(service_name: str):
    name = decode_path(service_name)
    return _netinfo(current_app.extensions["root"].services.find_by_name(name), name)


@bp.get("/ip/<service_ip>")
def by_ip(service_ip: str):
    address = path_params(ServiceIpPath, service_ip=decode_path(service_ip)).service_ip
    return _netinfo(current_app.extensions["root"].services.find_by_ip(address), address)


def _netinfo(job: dict | None, what: str):
    if job is None:
        raise ApiError(404, f"no service {what}")
    info = {k: job[k] for k in NAME_FIELDS if job.get(k) is not None}
    info["service_job_id"] = str(job["_id"])
    info["service_ip_list"] = [
        {k: e.get(k) for k in ("Address", "Address_v6", "IpType")} for e in job["service_ip_list"]
    ]
    info["instance_list"] = [{k: i.get(k) for k in INSTANCE_FIELDS} for i in job["instance_list"]]
    return jsonify(info)


@bp.get("/available-ip/", defaults={"count": "1"})
@bp.get("/available-ip/<count>")
def available_ip(count: str):
    """Preview of the next free RR addresses (not reserved: another deploy may take them)."""
    query = path_params(PreviewQuery, count=count, v=request.args.get("v"))
    number, version = query.count, query.v
    allocator = current_app.extensions["root"].allocator
    out = []
    if version in (None, "4"):
        out += [_ip(a, None, "IPv4") for a in allocator.preview(Pool.SERVICE_V4, number)]
    if version in (None, "6"):
        out += [_ip(None, a, "IPv6") for a in allocator.preview(Pool.RR_V6, number)]
    return jsonify({"available_service_ips": out})


def _ip(v4: str | None, v6: str | None, kind: str) -> dict:
    return {"Address": v4, "Address_v6": v6, "IpType": kind}
