"""Materials inventory bodies."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from microfactory.types import BodyId, Number

UNITS = ("g", "kg", "m", "mm", "sheets", "pcs", "ml", "l")


def _unit(v: str) -> str:
    if v not in UNITS:
        raise ValueError(f"unit must be one of: {', '.join(UNITS)}")
    return v


class MaterialCreate(BaseModel):
    """A stock of material: what, which colour, how much, and on which machine it is loaded."""

    model_config = ConfigDict(extra="forbid")

    material: str = Field(min_length=1, max_length=64)
    colour: str = Field("", max_length=64)
    amount: Annotated[Number, Field(ge=0, le=1e9)] = 0.0
    unit: str = "g"
    machine_id: BodyId | None = None  # loaded on this machine
    notes: str = Field("", max_length=500)

    @field_validator("material", "colour")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @field_validator("material")
    @classmethod
    def _nonblank(cls, v: str) -> str:
        if not v:
            raise ValueError("material must not be blank")
        return v

    _check_unit = field_validator("unit")(_unit)


class MaterialUpdate(BaseModel):
    """Change some fields of a stock; `machine_id: null` unloads it."""

    model_config = ConfigDict(extra="forbid")

    material: Annotated[str, Field(min_length=1, max_length=64)] | SkipJsonSchema[None] = None
    colour: Annotated[str, Field(max_length=64)] | SkipJsonSchema[None] = None
    amount: Annotated[Number, Field(ge=0, le=1e9)] | SkipJsonSchema[None] = None
    unit: str | SkipJsonSchema[None] = None
    machine_id: BodyId | None = None
    notes: Annotated[str, Field(max_length=500)] | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _no_nulls(self) -> MaterialUpdate:
        nulls = sorted(
            k for k in self.model_fields_set if k != "machine_id" and getattr(self, k) is None
        )
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null (only machine_id can: unload)")
        return self

    @field_validator("unit")
    @classmethod
    def _unit_ok(cls, v: str | None) -> str | None:
        return None if v is None else _unit(v)

    @field_validator("material")
    @classmethod
    def _nonblank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("material must not be blank")
        return None if v is None else v.strip()


class MaterialRead(BaseModel):
    """A stock of material as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    material: str
    colour: str
    amount: float
    unit: str
    machine_id: int | None
    machine_name: str | None = None
    notes: str
    updated_at: dt.datetime
