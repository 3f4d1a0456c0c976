"""Request and response bodies of the network API (the shop side)."""

from __future__ import annotations

import datetime as dt
import functools
from importlib import resources
from typing import Annotated

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator, model_validator

from microfactory.types import Bool, Number

# Open Know-Where 1.0's access types.
ACCESS_TYPES = ("Public", "Restricted", "Restricted with public hours", "Private")


@functools.cache
def country_codes() -> frozenset[str]:
    """Return the ISO 3166-1 alpha-2 codes (from the tz database's iso3166.tab, in tzdata)."""
    text = resources.files("tzdata").joinpath("zoneinfo", "iso3166.tab").read_text("utf-8")
    return frozenset(
        line.split("\t", 1)[0] for line in text.splitlines() if line and not line.startswith("#")
    )


class ProfileUpdate(BaseModel):
    """The shop's public profile, as admins set it (every field replaces the stored one)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=200)
    url: AnyHttpUrl | None = None  # the shop's public base URL
    city: str = Field("", max_length=100)
    country: str = Field("", max_length=2, description="ISO 3166-1 alpha-2 code, e.g. BE")
    lat: Annotated[Number, Field(ge=-90, le=90)] | None = None
    lon: Annotated[Number, Field(ge=-180, le=180)] | None = None
    round_to_city: Bool = Field(
        False,
        alias="roundToCity",
        description="Publish the coordinates rounded to 0.1° (about 11 km), as OKW advises",
    )
    access_type: str = Field("Restricted", alias="accessType")
    contact: str = Field("", max_length=200)
    description: str = Field("", max_length=5000)

    @field_validator("name", "city", "contact")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @field_validator("country")
    @classmethod
    def _country(cls, v: str) -> str:
        v = v.strip().upper()
        if v and v not in country_codes():
            raise ValueError(f"{v!r} is not an ISO 3166-1 alpha-2 country code (such as BE)")
        return v

    @field_validator("access_type")
    @classmethod
    def _access(cls, v: str) -> str:
        if v not in ACCESS_TYPES:
            raise ValueError(f"accessType must be one of: {', '.join(ACCESS_TYPES)}")
        return v

    @model_validator(mode="after")
    def _pair(self) -> ProfileUpdate:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("give lat and lon together, or neither")
        return self


class ProfileRead(BaseModel):
    """The shop's public profile, with its network id."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    shop_id: str
    name: str
    url: str
    city: str
    country: str
    lat: float | None
    lon: float | None
    round_to_city: bool = Field(alias="roundToCity")
    access_type: str = Field(alias="accessType")
    contact: str
    description: str
    updated_at: dt.datetime | None


class PushStatusRead(BaseModel):
    """How pushing to one hub goes."""

    hub_url: str
    last_attempt_at: dt.datetime | None
    last_success_at: dt.datetime | None
    last_status: str | None
    last_sequence: int | None
    last_error: str | None
    last_error_at: dt.datetime | None
    failures: int
    next_attempt_at: dt.datetime | None


class PushStatusList(BaseModel):
    """The push status of every configured hub."""

    hubs: list[PushStatusRead]
