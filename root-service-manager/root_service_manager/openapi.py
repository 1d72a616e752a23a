"""OpenAPI document of the root's HTTP API, generated from the request models.

Bodies and path parameters come from `schemas` (the classes the views validate with), the
answers from the small response models below, so the document says what the code checks.
Served at /docs/openapi.json, with a Swagger page at /api/docs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from . import schemas


class ErrorBody(BaseModel):
    error: str = Field(description="the HTTP status phrase")
    reason: str = Field(description="what is wrong, and what to fix")
    field: str | None = Field(None, description="the input field at fault (bad input only)")


class ServiceIpEntry(BaseModel):
    IpType: str
    Address: str | None
    Address_v6: str | None


class NetInfoInstance(BaseModel):
    cluster_id: str | None
    instance_number: int
    instance_ip: str | None
    instance_ip_v6: str | None


class NetInfo(BaseModel):
    app_name: str | None = None
    app_ns: str | None = None
    service_name: str | None = None
    service_ns: str | None = None
    applicationID: str | None = None
    service_job_id: str
    service_ip_list: list[ServiceIpEntry]
    instance_list: list[NetInfoInstance]


class AvailableIps(BaseModel):
    available_service_ips: list[ServiceIpEntry]


class Message(BaseModel):
    """Success answers of `/api/net`: upstream's text plus what changed."""

    message: str


class Subnet(BaseModel):
    subnet_addr: str
    subnet_addr_v6: str


_BODIES = (
    schemas.ClusterRegistration,
    schemas.ServiceDeploy,
    schemas.InstanceDeploy,
    schemas.DeployStatus,
    schemas.SubnetRelease,
    schemas.ClusterState,
)
_ANSWERS = (ErrorBody, NetInfo, AvailableIps, Message, Subnet)
_REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _path_params(model: type[BaseModel], names: tuple[str, ...]) -> list[dict[str, Any]]:
    properties = model.model_json_schema()["properties"]
    return [
        {"name": name, "in": "path", "required": True, "schema": properties[name]} for name in names
    ]


def _operation(
    summary: str,
    ok: type[BaseModel],
    *,
    body: type[BaseModel] | None = None,
    params: list[dict[str, Any]] | None = None,
    errors: dict[str, str] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    def answer(text: str, model: type[BaseModel]) -> dict[str, Any]:
        return {"description": text, "content": {"application/json": {"schema": _ref(model)}}}

    responses = {"200": answer("OK", ok), "400": answer("bad input, the field named", ErrorBody)}
    for status, text in (errors or {}).items():
        responses[status] = answer(text, ErrorBody)
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if not public:
        operation["security"] = []
    return operation


def build_spec() -> dict[str, Any]:
    _, definitions = models_json_schema(
        [(model, "validation") for model in (*_BODIES, *_ANSWERS)], ref_template=_REF
    )
    components = definitions.get("$defs", {})
    job_id = _path_params(schemas.JobIdPath, ("job_id",))
    instance = _path_params(schemas.InstancePath, ("job_id", "instance_number"))
    service_ip = _path_params(schemas.ServiceIpPath, ("service_ip",))
    job_name = [
        {
            "name": "job_name",
            "in": "path",
            "required": True,
            "description": "app_name.app_ns.service_name.service_ns with '.' written as '_'",
            "schema": {"type": "string"},
        }
    ]
    public_errors = {
        "401": "missing or invalid token",
        "404": "unknown service",
        "503": "JWT public key not known yet",
    }
    unknown_job = {"404": "unknown job"}
    count = _path_params(schemas.PreviewQuery, ("count",))
    version = {
        "name": "v",
        "in": "query",
        "schema": schemas.PreviewQuery.model_json_schema()["properties"]["v"],
    }
    netinfo = "/api/pubnet/service/netinfo"
    paths = {
        "/api/net/state": {
            "get": _operation(
                "The store's generation, whether it is rebuilding, how the caller is registered",
                Message,
            )
        },
        "/api/net/cluster/state": {
            "post": _operation(
                "A cluster's jobs and subnets, restored into a new store",
                Message,
                body=schemas.ClusterState,
            )
        },
        "/api/net/cluster": {
            "post": _operation("Register a cluster", Message, body=schemas.ClusterRegistration)
        },
        "/api/net/service/deploy": {
            "post": _operation(
                "Register a service and give it its RR and Closest IPs",
                Message,
                body=schemas.ServiceDeploy,
                errors={"409": "name or _id taken, or other addresses than it has"},
            )
        },
        "/api/net/service/{job_id}": {
            "delete": _operation(
                "Remove a service without instances", Message, params=job_id, errors=unknown_job
            )
        },
        "/api/net/instance/deploy": {
            "post": _operation(
                "Give an instance its instance IPs",
                Message,
                body=schemas.InstanceDeploy,
                errors=unknown_job,
            )
        },
        "/api/net/{job_id}/{instance_number}": {
            "delete": _operation(
                "Remove one instance (or all: -1)", Message, params=instance, errors=unknown_job
            )
        },
        "/api/net/service/net_deploy_status": {
            "post": _operation(
                "Where instances run (from the cluster)",
                Message,
                body=schemas.DeployStatus,
                errors=unknown_job,
            )
        },
        "/api/net/service/{job_name}/instances": {
            "get": _operation(
                "Table query by job name (from a registered cluster)",
                Message,
                params=job_name,
                errors=unknown_job,
            )
        },
        "/api/net/service/ip/{service_ip}/instances": {
            "get": _operation(
                "Table query by service IP (from a registered cluster)",
                Message,
                params=service_ip,
                errors=unknown_job,
            )
        },
        "/api/net/interest/{job_name}": {
            "delete": _operation(
                "The calling cluster no longer wants updates of a job", Message, params=job_name
            )
        },
        "/api/net/subnet": {
            "get": _operation("A fresh node subnet", Subnet, errors={"503": "none left"}),
            "delete": _operation(
                "Give a node subnet back",
                Message,
                body=schemas.SubnetRelease,
                errors={"404": "not a subnet handed out to the calling cluster"},
            ),
        },
        f"{netinfo}/{{service_name}}": {
            "get": _operation(
                "Service and instance IPs of a job",
                NetInfo,
                params=[{**job_name[0], "name": "service_name"}],
                errors=public_errors,
                public=True,
            )
        },
        f"{netinfo}/ip/{{service_ip}}": {
            "get": _operation(
                "Service and instance IPs of the job owning a service IP",
                NetInfo,
                params=service_ip,
                errors=public_errors,
                public=True,
            )
        },
        f"{netinfo}/available-ip/{{count}}": {
            "get": _operation(
                "Preview of the next free RR addresses (not reserved)",
                AvailableIps,
                params=[*count, version],
                errors=public_errors,
                public=True,
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Oakestra root service manager", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


SPEC = build_spec()

SWAGGER_PAGE = """<!doctype html>
<html><head><title>Oakestra root service manager API</title>
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/docs/openapi.json", dom_id: "#ui"});</script>
<noscript>The spec is at <a href="/docs/openapi.json">/docs/openapi.json</a>.</noscript>
</body></html>
"""
