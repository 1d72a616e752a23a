"""Request models of the root's HTTP API: every body and path parameter, declared once.

The views validate with `oakestra_net.http_input` (a 400 naming the field on anything
wrong) and the OpenAPI document is generated from the same classes, so what is checked
and what is documented cannot drift apart. Numbers are ASCII decimal only, addresses are
canonicalised, object ids are 24 hex digits.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from oakestra_net.validation import (
    MAX_INSTANCE_NUMBER,
    InstanceNumber,
    IpText,
    IpV4Text,
    IpV6Text,
    ObjectIdText,
    Port,
    ShortText,
    ascii_int_type,
)

from .descriptor import DeploymentDescriptor

MAX_REPORTS = 10_000
MAX_PREVIEW = 100


class _Body(BaseModel):
    """Unknown keys are ignored (newer Oakestra versions may send more)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ClusterRegistration(_Body):
    cluster_id: ShortText
    cluster_address: IpText = Field(description="the address the cluster calls the root from")
    cluster_port: Port


class ServiceDeploy(_Body):
    id: ObjectIdText = Field(alias="_id", description="the job's id in Oakestra")
    deployment_descriptor: DeploymentDescriptor


class InstanceDeploy(_Body):
    id: ObjectIdText = Field(alias="_id")
    instance_number: InstanceNumber
    cluster_id: ShortText


def _nil_is_none(value: object) -> object:
    """Upstream unikernels report "<nil>" for no IPv6 address."""
    return None if value in ("", "<nil>") else value


class LocationReport(_Body):
    """Where one instance runs; a null `namespace_ip` clears the location (the cluster
    sends that when the instance left its node)."""

    instance_number: InstanceNumber
    namespace_ip: IpV4Text | None
    namespace_ip_v6: Annotated[IpV6Text | None, BeforeValidator(_nil_is_none)] = None
    host_ip: IpText | None = None
    host_port: ascii_int_type(0, 65535) | None = None

    @model_validator(mode="after")
    def _placed_needs_host(self) -> LocationReport:
        if self.namespace_ip is not None and (self.host_ip is None or self.host_port is None):
            raise ValueError("host_ip and host_port are required with a namespace_ip")
        return self


class DeployStatus(_Body):
    job_id: ObjectIdText
    instances: Annotated[list[LocationReport], Field(min_length=1, max_length=MAX_REPORTS)]


class SubnetRelease(_Body):
    subnet_addr: IpV4Text | None = None
    subnet_addr_v6: IpV6Text | None = None

    @model_validator(mode="after")
    def _one_given(self) -> SubnetRelease:
        if self.subnet_addr is None and self.subnet_addr_v6 is None:
            raise ValueError("must name subnet_addr, subnet_addr_v6 or both")
        return self


# -- path parameters --------------------------------------------------------------------


class ClusterState(_Body):
    """What a cluster knows is in use, pushed into a root whose store is new (`rebuild.py`
    checks each entry and skips a bad one, so one bad job never loses the others)."""

    jobs: Annotated[list[Any], Field(max_length=100_000)] = []
    subnets: Annotated[list[Any], Field(max_length=100_000)] = []


class JobIdPath(_Body):
    job_id: ObjectIdText


class ServiceIpPath(_Body):
    service_ip: IpText


class InstancePath(_Body):
    job_id: ObjectIdText
    instance_number: ascii_int_type(-1, MAX_INSTANCE_NUMBER, "-1: all instances")


class PreviewQuery(_Body):
    count: ascii_int_type(1, MAX_PREVIEW)
    v: Literal["4", "6"] | None = None
