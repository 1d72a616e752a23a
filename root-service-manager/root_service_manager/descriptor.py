"""Reading a deployment descriptor: the job name and the user-chosen service IPs.

Pure: a descriptor dict in, validated values out, `ApiError(400)` with a reason on
anything wrong. Oakestra's system manager sends `service_name`/`service_ns` (copied
from `microservice_name`/`microservice_namespace`) and `RR_ip`/`RR_ip_v6`; the SLA
form `addresses.{rr_ip, rr_ip_v6, closest_ip, closest_ip_v6}` is accepted too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oakestra_net.addressing import InvalidAddress, Pool, parse_user_address
from oakestra_net.names import InvalidName, format_job_name, validate_name_part

from .errors import ApiError

# (pool, top-level key, key inside "addresses")
_CHOSEN_ADDRESS_KEYS = {
    "rr_v4": (Pool.SERVICE_V4, "RR_ip", "rr_ip"),
    "rr_v6": (Pool.RR_V6, "RR_ip_v6", "rr_ip_v6"),
    "closest_v4": (Pool.SERVICE_V4, None, "closest_ip"),
    "closest_v6": (Pool.CLOSEST_V6, None, "closest_ip_v6"),
}

# Keys of the job document that the descriptor must not overwrite.
_RESERVED_KEYS = {"_id", "job_name", "service_ip_list", "instance_list", "state"}


@dataclass(frozen=True)
class ServiceRequest:
    job_name: str
    chosen: dict[str, str]  # "rr_v4" | "rr_v6" | "closest_v4" | "closest_v6" -> address
    fields: dict[str, Any]  # descriptor fields to store with the job


def read_descriptor(descriptor: Any) -> ServiceRequest:
    if not isinstance(descriptor, dict):
        raise ApiError(400, "field 'deployment_descriptor' must be a JSON object")
    try:
        job_name = format_job_name(
            _part(descriptor, "app_name"),
            _part(descriptor, "app_ns"),
            _part(descriptor, "service_name", "microservice_name"),
            _part(descriptor, "service_ns", "microservice_namespace"),
        )
    except InvalidName as err:
        raise ApiError(400, f"invalid deployment descriptor: {err}") from None
    chosen = {kind: addr for kind in _CHOSEN_ADDRESS_KEYS if (addr := _chosen(descriptor, kind))}
    if chosen.get("rr_v4") and chosen.get("rr_v4") == chosen.get("closest_v4"):
        raise ApiError(400, "RR_ip and closest_ip must differ")
    fields = {k: v for k, v in sanitize(descriptor).items() if k not in _RESERVED_KEYS}
    return ServiceRequest(job_name, chosen, fields)


def _part(descriptor: dict[str, Any], key: str, fallback: str | None = None) -> str:
    value = descriptor.get(key)
    if value in (None, "") and fallback is not None:
        value, key = descriptor.get(fallback), fallback
    return validate_name_part(value, key)


def _chosen(descriptor: dict[str, Any], kind: str) -> str | None:
    pool, top_key, nested_key = _CHOSEN_ADDRESS_KEYS[kind]
    addresses = descriptor.get("addresses")
    nested = addresses.get(nested_key) if isinstance(addresses, dict) else None
    top = descriptor.get(top_key) if top_key else None
    values = {}
    for key, value in ((top_key, top), (f"addresses.{nested_key}", nested)):
        if value not in (None, ""):
            try:
                values[key] = parse_user_address(pool, value, field=key)
            except InvalidAddress as err:
                raise ApiError(400, str(err)) from None
    if len(set(values.values())) > 1:
        raise ApiError(400, f"conflicting addresses given: {values}")
    return next(iter(values.values()), None)


def sanitize(value: Any) -> Any:
    """Drop keys MongoDB cannot store ('$…', dotted, NUL)."""
    if isinstance(value, dict):
        return {
            k: sanitize(v)
            for k, v in value.items()
            if isinstance(k, str) and not k.startswith("$") and "." not in k and "\0" not in k
        }
    if isinstance(value, list):
        return [sanitize(v) for v in value]
    return value
