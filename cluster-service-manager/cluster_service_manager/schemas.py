"""Request models of the cluster's HTTP API (what the root and the cluster manager send).

Validated with `oakestra_net.http_input`: a 400 naming the field on anything wrong.
`REASONS` keeps upstream's wording at the start of a reason ("Invalid instancenum"),
which clients of the upstream cluster manager look for.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from oakestra_net import topics
from oakestra_net.validation import MAX_INSTANCE_NUMBER, InvalidInput, JobNameText

JOB_UPDATE_REASONS = {"instance_number": "Invalid instancenum", "type": "Invalid type"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _node_id(value: str) -> str:
    try:
        topics.node_topic(value, topics.SERVICE_DEPLOYED)
    except topics.InvalidTopic as err:
        raise ValueError(str(err)) from None
    return value


class Deployment(_Body):
    """A job the orchestrator deployed; `instance_number` + `worker_id` (optional, ours)
    say where it scheduled the instance (Oakestra's cluster manager sends only the name)."""

    job_name: JobNameText
    instance_number: Annotated[int, Field(strict=True, ge=0, le=MAX_INSTANCE_NUMBER)] | None = None
    worker_id: (
        Annotated[str, Field(strict=True, max_length=256), AfterValidator(_node_id)] | None
    ) = None

    def placement(self) -> tuple[int, str] | None:
        """(instance_number, worker_id), None when neither is given; one alone is bad input."""
        if self.instance_number is None and self.worker_id is None:
            return None
        if self.worker_id is None:
            raise InvalidInput("worker_id", "is required with instance_number")
        if self.instance_number is None:
            raise InvalidInput("instance_number", "is required with worker_id")
        return self.instance_number, self.worker_id


class JobNamePath(_Body):
    job_name: JobNameText


class JobUpdate(_Body):
    """The root's push: instances of a job changed (-1: all of them)."""

    job_name: JobNameText
    instance_number: Annotated[int, Field(strict=True, ge=-1, le=MAX_INSTANCE_NUMBER)]
    type: Literal["DEPLOYMENT", "UNDEPLOYMENT"]
