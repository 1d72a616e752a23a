"""Reading a deployment descriptor: the job name and the user-chosen service IPs.

Pure: `DeploymentDescriptor` is the pydantic model of what Oakestra's system manager
sends (`service_name`/`service_ns`, copied from `microservice_name`/
`microservice_namespace`, and `RR_ip`/`RR_ip_v6`; the SLA form `addresses.{rr_ip,
rr_ip_v6, closest_ip, closest_ip_v6}` is accepted too). Unknown keys are kept and stored
with the job. `to_request` adds the checks that span fields and raises `InvalidInput`
naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, model_validator

from oakestra_net.addressing import Pool, parse_user_address
from oakestra_net.names import InvalidName, format_job_name, validate_name_part
from oakestra_net.validation import InvalidInput, parse

# Keys of the job document that the descriptor must not overwrite.
_RESERVED_KEYS = {"_id", "job_name", "service_ip_list", "instance_list", "state"}


def _name_part(value: object) -> str:
    try:
        return validate_name_part(value, "name")
    except InvalidName as err:
        raise ValueError(str(err).removeprefix("name ")) from None


def _blank_is_none(value: object) -> object:
    return None if value == "" else value


def _address(pool: Pool):
    def check(value: object) -> str | None:
        return None if value is None else parse_user_address(pool, value, field="the value")

    return check


NamePart = Annotated[object, AfterValidator(_name_part)]


def _chosen(pool: Pool) -> Any:
    return Annotated[object, BeforeValidator(_blank_is_none), AfterValidator(_address(pool))]


class ChosenAddresses(BaseModel):
    """The SLA form of user-chosen service IPs."""

    model_config = ConfigDict(extra="allow")

    rr_ip: _chosen(Pool.SERVICE_V4) = None
    rr_ip_v6: _chosen(Pool.RR_V6) = None
    closest_ip: _chosen(Pool.SERVICE_V4) = None
    closest_ip_v6: _chosen(Pool.CLOSEST_V6) = None


class DeploymentDescriptor(BaseModel):
    model_config = ConfigDict(extra="allow")

    app_name: NamePart
    app_ns: NamePart
    service_name: NamePart
    service_ns: NamePart
    RR_ip: _chosen(Pool.SERVICE_V4) = None
    RR_ip_v6: _chosen(Pool.RR_V6) = None
    addresses: ChosenAddresses | None = None

    @model_validator(mode="before")
    @classmethod
    def _microservice_fallback(cls, data: Any) -> Any:
        """`service_name`/`service_ns` missing or empty: take the `microservice_*` ones."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, fallback in (
            ("service_name", "microservice_name"),
            ("service_ns", "microservice_namespace"),
        ):
            if data.get(key) in (None, "") and fallback in data:
                data[key] = data[fallback]
        return data

    def to_request(self, raw: dict[str, Any]) -> ServiceRequest:
        """The job name, the chosen addresses and the fields to store (from `raw`)."""
        job_name = format_job_name(
            str(self.app_name), str(self.app_ns), str(self.service_name), str(self.service_ns)
        )
        nested = self.addresses or ChosenAddresses()
        chosen: dict[str, str] = {}
        for kind, top_key, top, nested_key in (
            ("rr_v4", "RR_ip", self.RR_ip, "rr_ip"),
            ("rr_v6", "RR_ip_v6", self.RR_ip_v6, "rr_ip_v6"),
            ("closest_v4", None, None, "closest_ip"),
            ("closest_v6", None, None, "closest_ip_v6"),
        ):
            inner = getattr(nested, nested_key)
            if top and inner and top != inner:
                raise InvalidInput(
                    f"deployment_descriptor.addresses.{nested_key}",
                    f"conflicts with {top_key}: {inner} is not {top}",
                )
            if address := top or inner:
                chosen[kind] = str(address)
        if chosen.get("rr_v4") and chosen.get("rr_v4") == chosen.get("closest_v4"):
            raise InvalidInput(
                "deployment_descriptor.addresses.closest_ip", "RR_ip and closest_ip must differ"
            )
        fields = {k: v for k, v in sanitize(raw).items() if k not in _RESERVED_KEYS}
        return ServiceRequest(job_name, chosen, fields)


@dataclass(frozen=True)
class ServiceRequest:
    job_name: str
    chosen: dict[str, str]  # "rr_v4" | "rr_v6" | "closest_v4" | "closest_v6" -> address
    fields: dict[str, Any]  # descriptor fields to store with the job


class _Envelope(BaseModel):
    deployment_descriptor: DeploymentDescriptor


def read_descriptor(descriptor: Any) -> ServiceRequest:
    """A descriptor dict (already depth-checked) to a ServiceRequest, or InvalidInput."""
    model = parse(_Envelope, {"deployment_descriptor": descriptor}).deployment_descriptor
    return model.to_request(descriptor)


_SERVICE_IP_FIELDS = {
    "rr_v4": ("RR", "Address"),
    "rr_v6": ("RR", "Address_v6"),
    "closest_v4": ("Closest", "Address"),
    "closest_v6": ("Closest", "Address_v6"),
}


def conflicting_choice(job: dict[str, Any], request: ServiceRequest) -> str | None:
    """Why a re-deploy of an existing job asks for other addresses than it has, or None."""
    held = {entry.get("IpType"): entry for entry in job.get("service_ip_list", [])}
    for kind, address in request.chosen.items():
        ip_type, key = _SERVICE_IP_FIELDS[kind]
        current = held.get(ip_type, {}).get(key)
        if current != address:
            return f"asked for {ip_type} {address}, it has {current}"
    return None


def sanitize(value: Any) -> Any:
    """Drop keys MongoDB cannot store ('$…', dotted, NUL); depth is bounded by the caller."""
    if isinstance(value, dict):
        return {
            k: sanitize(v)
            for k, v in value.items()
            if isinstance(k, str) and not k.startswith("$") and "." not in k and "\0" not in k
        }
    if isinstance(value, list):
        return [sanitize(v) for v in value]
    return value
