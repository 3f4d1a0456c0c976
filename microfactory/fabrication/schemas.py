"""Slicer profile request and response bodies."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class SlicerProfileRead(BaseModel):
    """A machine's PrusaSlicer profile; `generated` when no operator has edited it."""

    machine_id: int
    profile: str
    generated: bool
    updated_at: dt.datetime | None
    updated_by_id: int | None


class SlicerProfileUpdate(BaseModel):
    """A new profile text: PrusaSlicer .ini, `key = value` lines."""

    model_config = ConfigDict(extra="forbid")

    profile: str = Field(min_length=1, max_length=256 * 1024)
