"""Jobs."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Enum, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from microfactory.db import Base, TimestampMixin, UTCDateTime
from microfactory.machines.models import MachineKind


class JobState(StrEnum):
    """submitted → approved → queued → assigned → running ⇄ paused → finished|failed|cancelled,
    then cleared once the operator confirms the machine is free."""

    SUBMITTED = "submitted"
    APPROVED = "approved"
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CLEARED = "cleared"


ACTIVE_STATES = frozenset({JobState.ASSIGNED, JobState.RUNNING, JobState.PAUSED})
ENDED_STATES = frozenset({JobState.FINISHED, JobState.FAILED, JobState.CANCELLED})


def _enum(cls: type[StrEnum], length: int) -> Enum:
    return Enum(
        cls, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e]
    )


class Job(TimestampMixin, Base):
    """One fabrication job, from upload to a cleared bed."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_priority", "state", "priority"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    state: Mapped[JobState] = mapped_column(_enum(JobState, 16), default=JobState.SUBMITTED)
    machine_kind: Mapped[MachineKind] = mapped_column(_enum(MachineKind, 32))
    requested_machine_id: Mapped[int | None] = mapped_column(ForeignKey("machines.id"))
    machine_id: Mapped[int | None] = mapped_column(ForeignKey("machines.id"), index=True)
    priority: Mapped[int] = mapped_column(default=0)  # higher runs first; set by operators

    file_name: Mapped[str] = mapped_column(String(255))  # as uploaded, for display only
    stored_name: Mapped[str] = mapped_column(String(100))  # generated; the file on disk
    file_sha256: Mapped[str] = mapped_column(String(64))
    file_size: Mapped[int]
    lines_total: Mapped[int]

    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    analysis: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    last_acked_line: Mapped[int | None]  # program line number (1-based) last acknowledged
    last_line_text: Mapped[str | None] = mapped_column(String(500))
    outcome: Mapped[str | None] = mapped_column(String(8))  # good, bad (at bed clear)
    notes: Mapped[str] = mapped_column(Text, default="")

    approved_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    approved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    cleared_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    cleared_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    paused_s: Mapped[float] = mapped_column(default=0.0)  # time spent paused, for active time
    paused_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    # Made from a design: what, with which settings, and whose work it is.
    design_id: Mapped[int | None] = mapped_column(
        ForeignKey("designs.id", ondelete="SET NULL"), index=True
    )
    design_file_id: Mapped[int | None] = mapped_column(
        ForeignKey("design_files.id", ondelete="SET NULL")
    )
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    material: Mapped[str | None] = mapped_column(String(64))
    copies: Mapped[int] = mapped_column(default=1)
    required_tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    nozzle_diameter_mm: Mapped[float | None]  # the nozzle the G-code was sliced for
    attribution: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    flags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # e.g. licence_nc
    price: Mapped[float | None]  # what the shop charges for it, if anything
    # Turning a design into G-code: ready (an upload), pending, running, failed.
    preparation: Mapped[str] = mapped_column(String(16), default="ready")
    preparation_log: Mapped[str | None] = mapped_column(Text)
    allow_firmware_commands: Mapped[bool] = mapped_column(default=False)  # set by operators
    queued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    waiting_reason: Mapped[str | None] = mapped_column(String(300))  # why it has not started


class JobEvent(Base):
    """One state transition of a job: the job's history, append-only."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    from_state: Mapped[JobState | None] = mapped_column(_enum(JobState, 16))  # None: created
    to_state: Mapped[JobState] = mapped_column(_enum(JobState, 16))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))  # who, when a person
    actor: Mapped[str] = mapped_column(String(16))  # "user", "machine" or "system"
    reason: Mapped[str | None] = mapped_column(Text)
    last_acked_line: Mapped[int | None]  # where relevant: the program line last acknowledged
    last_line_text: Mapped[str | None] = mapped_column(String(500))
