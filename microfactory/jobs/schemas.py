"""Job request and response bodies."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from microfactory.jobs.models import JobState
from microfactory.logs import scrub_paths
from microfactory.machines.models import MachineKind
from microfactory.types import BodyId, Bool, Int, Number


class JobRead(BaseModel):
    """A job as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    owner_id: int
    title: str
    state: JobState
    machine_kind: MachineKind
    requested_machine_id: int | None
    machine_id: int | None
    priority: int
    file_name: str
    file_sha256: str
    file_size: int
    lines_total: int
    progress: dict[str, Any]
    analysis: dict[str, Any]
    failure_reason: str | None
    last_acked_line: int | None
    last_line_text: str | None
    outcome: str | None
    notes: str
    design_id: int | None
    parameters: dict[str, Any]
    material: str | None
    copies: int
    required_tags: list[str]
    nozzle_diameter_mm: float | None
    attribution: dict[str, Any]
    flags: dict[str, Any]
    price: float | None
    preparation: str
    preparation_log: str | None
    allow_firmware_commands: bool
    waiting_reason: str | None
    queued_at: dt.datetime | None
    approved_at: dt.datetime | None
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    cleared_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @field_validator("failure_reason", "preparation_log", "waiting_reason")
    @classmethod
    def _no_internal_paths(cls, v: str | None) -> str | None:
        # Scrubbed at the boundary: the stored text keeps the paths for operators' debugging.
        return scrub_paths(v) if v else v


class JobEventRead(BaseModel):
    """One transition of a job's life: from, to, when, who, why."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    from_state: JobState | None  # None: the job was created
    to_state: JobState
    at: dt.datetime
    actor: str  # "user", "machine" or "system"
    actor_id: int | None  # the person, when a person did it
    reason: str | None
    last_acked_line: int | None
    last_line_text: str | None

    @field_validator("reason")
    @classmethod
    def _no_internal_paths(cls, v: str | None) -> str | None:
        return scrub_paths(v) if v else v


class DispatchRequest(BaseModel):
    """Which machine to run a job on (default: the requested one, or any idle compatible one)."""

    model_config = ConfigDict(extra="forbid")

    machine_id: BodyId | None = None


class ClearRequest(BaseModel):
    """The bed is clear: how did the job come out?"""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["good", "bad"]
    requeue: Bool = False  # a bad outcome can go back to the queue as a new job
    notes: str = Field("", max_length=2000)


class PriorityRequest(BaseModel):
    """An operator's priority for a job (higher runs first)."""

    model_config = ConfigDict(extra="forbid")

    priority: Int = Field(ge=-100, le=100)


class DesignJobCreate(BaseModel):
    """A job made from a design of the commons, with its settings."""

    model_config = ConfigDict(extra="forbid")

    design_id: BodyId
    file_id: BodyId | None = None  # default: the design's only printable file
    parameters: dict[str, Any] = Field(default_factory=dict)
    material: str | None = Field(None, max_length=64)
    copies: Int = Field(1, ge=1, le=50)
    machine_kind: MachineKind | None = None
    machine_id: BodyId | None = None
    required_tags: list[str] = Field(default_factory=list, max_length=20)
    title: str | None = Field(None, max_length=200)
    price: Number | None = Field(None, ge=0)
