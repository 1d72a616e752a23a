"""Request models of the cluster's HTTP API (what the root and the cluster manager send).

Validated with `oakestra_net.http_input`: a 400 naming the field on anything wrong.
`REASONS` keeps upstream's wording at the start of a reason ("Invalid instancenum"),
which clients of the upstream cluster manager look for.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from oakestra_net.validation import MAX_INSTANCE_NUMBER, JobNameText

JOB_UPDATE_REASONS = {"instance_number": "Invalid instancenum", "type": "Invalid type"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Deployment(_Body):
    job_name: JobNameText


class JobNamePath(_Body):
    job_name: JobNameText


class JobUpdate(_Body):
    """The root's push: instances of a job changed (-1: all of them)."""

    job_name: JobNameText
    instance_number: Annotated[int, Field(strict=True, ge=-1, le=MAX_INSTANCE_NUMBER)]
    type: Literal["DEPLOYMENT", "UNDEPLOYMENT"]
