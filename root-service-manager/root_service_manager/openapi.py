"""OpenAPI description of the public netinfo API (served at /docs/openapi.json)."""

from __future__ import annotations

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "reason": {"type": "string"}},
}
_SERVICE_IP = {
    "type": "object",
    "properties": {
        "IpType": {"type": "string"},
        "Address": {"type": "string", "nullable": True},
        "Address_v6": {"type": "string", "nullable": True},
    },
}
_NETINFO = {
    "type": "object",
    "properties": {
        "app_name": {"type": "string"},
        "app_ns": {"type": "string"},
        "service_name": {"type": "string"},
        "service_ns": {"type": "string"},
        "applicationID": {"type": "string"},
        "service_job_id": {"type": "string"},
        "service_ip_list": {"type": "array", "items": _SERVICE_IP},
        "instance_list": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "cluster_id": {"type": "string"},
                    "instance_number": {"type": "integer"},
                    "instance_ip": {"type": "string"},
                    "instance_ip_v6": {"type": "string"},
                },
            },
        },
    },
}


def _responses(ok: dict) -> dict:
    def error(text: str) -> dict:
        return {"description": text, "content": {"application/json": {"schema": _ERROR}}}

    return {
        "200": {"description": "OK", "content": {"application/json": {"schema": ok}}},
        "400": error("bad input"),
        "401": error("missing or invalid token"),
        "404": error("unknown service"),
        "503": error("JWT public key not known yet"),
    }


def _get(summary: str, params: list[dict], ok: dict) -> dict:
    return {"get": {"summary": summary, "parameters": params, "responses": _responses(ok)}}


def _path(name: str, text: str) -> dict:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": text,
        "schema": {"type": "string"},
    }


SPEC = {
    "openapi": "3.0.3",
    "info": {"title": "Oakestra root service manager: netinfo", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/pubnet/service/netinfo/{service_name}": _get(
            "Service and instance IPs of a job",
            [_path("service_name", "job name with '.' written as '_'")],
            _NETINFO,
        ),
        "/api/pubnet/service/netinfo/ip/{service_ip}": _get(
            "Service and instance IPs of the job owning a service IP",
            [_path("service_ip", "IPv4 with '.' written as '_', or IPv6")],
            _NETINFO,
        ),
        "/api/pubnet/service/netinfo/available-ip/{count}": _get(
            "Preview of the next free RR addresses (not reserved)",
            [
                _path("count", "how many (1-100)"),
                {"name": "v", "in": "query", "schema": {"type": "string", "enum": ["4", "6"]}},
            ],
            {
                "type": "object",
                "properties": {"available_service_ips": {"type": "array", "items": _SERVICE_IP}},
            },
        ),
    },
}

SWAGGER_PAGE = """<!doctype html>
<html><head><title>Oakestra netinfo API</title>
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/docs/openapi.json", dom_id: "#ui"});</script>
<noscript>The spec is at <a href="/docs/openapi.json">/docs/openapi.json</a>.</noscript>
</body></html>
"""
