"""Design request and response bodies."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from microfactory.designs.models import Visibility
from microfactory.errors import InvalidInputError
from microfactory.types import BodyId

_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


class DesignCreate(BaseModel):
    """A new design's metadata (its files come as uploads)."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=20000)
    licence: str = Field(min_length=1, max_length=200)  # SPDX expression, checked by the service
    authors: list[str] = Field(default_factory=list, max_length=50)
    source_url: str | None = Field(None, max_length=500)
    version: str | None = Field(None, max_length=64)
    derivative_of: str | None = Field(None, max_length=64)
    tags: list[str] = Field(default_factory=list, max_length=50)

    @field_validator("title", "description", "licence")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @field_validator("authors")
    @classmethod
    def _authors(cls, v: list[str]) -> list[str]:
        names = [a.strip() for a in v if a and a.strip()]
        if any(len(a) > 200 for a in names):
            raise ValueError("an author's name is longer than 200 characters")
        return list(dict.fromkeys(names))

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        # One field may carry several tags: "bracket, mounting".
        tags = [t.strip().lower() for item in v for t in item.split(",") if t.strip()]
        if any(len(t) > 64 for t in tags):
            raise ValueError("a tag is longer than 64 characters")
        return list(dict.fromkeys(tags))[:50]

    @field_validator("source_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("source_url must be an http:// or https:// URL")
        return v

    @field_validator("version", "derivative_of")
    @classmethod
    def _blank(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    @field_validator("derivative_of")
    @classmethod
    def _derivative(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.lower()
        if not (v.isdigit() or _HASH_RE.match(v)):
            raise ValueError("derivative_of must be a design id or a 64-character content hash")
        return v


def build_create(**fields: Any) -> DesignCreate:
    """Validate form fields into DesignCreate; 422 listing every problem."""
    try:
        return DesignCreate(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'design'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInputError(f"invalid design: {problems}") from None


class LicenceFlagsRead(BaseModel):
    """What the licence forbids."""

    nd: bool
    nc: bool


class DesignFileRead(BaseModel):
    """One file of a design."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    size_bytes: int
    sha256: str
    analysis: dict[str, Any]


class ProvenanceRead(BaseModel):
    """One hop of the way a design travelled: from which shop, when, under which hash."""

    shop_url: str
    shop_id: str | None
    source_url: str
    content_hash: str
    fetched_at: dt.datetime


class DesignRead(BaseModel):
    """A design as the API shows it, with its licence rules and attribution."""

    id: int
    content_hash: str
    title: str
    description: str
    licence: str
    licence_flags: LicenceFlagsRead
    authors: list[str]
    source_url: str | None
    version: str | None
    derivative_of: str | None
    tags: list[str]
    files: list[DesignFileRead]
    attribution: dict[str, Any]
    okh: dict[str, Any] | None
    created_by_id: int | None
    visibility: Visibility
    provenance: list[ProvenanceRead]  # oldest hop first; empty for a design made here
    created_at: dt.datetime
    updated_at: dt.datetime


class VisibilityUpdate(BaseModel):
    """Who may see a design."""

    model_config = ConfigDict(extra="forbid")

    visibility: Visibility


class HashedFile(BaseModel):
    """One file of a design as other shops see it: its name, SHA-256 and size."""

    path: str = Field(max_length=255)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    kind: str = Field("", max_length=16)


class DesignMetadata(BaseModel):
    """A design by content hash: what another shop needs to fetch, check and credit it."""

    content_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    title: str = Field(max_length=200)
    description: str = Field("", max_length=20000)
    licence: str = Field(max_length=200)  # SPDX expression
    licence_flags: LicenceFlagsRead | None = None
    authors: list[str] = Field(default_factory=list, max_length=50)
    source_url: str | None = Field(None, max_length=500)
    version: str | None = Field(None, max_length=64)
    derivative_of: str | None = Field(None, max_length=64)  # a content hash
    tags: list[str] = Field(default_factory=list, max_length=50)
    provenance: list[ProvenanceRead] = Field(default_factory=list, max_length=100)
    files: list[HashedFile] = Field(max_length=50)


class RemoteImport(BaseModel):
    """Where to fetch a design from: a by-hash URL, a shop's base URL and a hash, or a
    shop's network id and a hash (found through a hub)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        max_length=1000,
        description="<shop>/api/v1/designs/by-hash/<sha256>, or a shop's base URL with `hash`",
    )
    shop: str | None = Field(
        None, max_length=128, description="a shop's network id (a hub finds it)"
    )
    hash: str | None = Field(None, description="the design's content hash (64 lower-case hex)")

    @field_validator("hash")
    @classmethod
    def _hash(cls, v: str | None) -> str | None:
        if v is not None and not _HASH_RE.match(v):
            raise ValueError("hash must be a SHA-256 in 64 lower-case hex characters")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> RemoteImport:
        if (self.url is None) == (self.shop is None):
            raise ValueError('give either "url" or "shop" (with "hash")')
        if self.shop is not None and self.hash is None:
            raise ValueError('"shop" needs a "hash"')
        return self


class ParameterSchema(BaseModel):
    """A design's Customizer parameters, for a form."""

    design_id: int
    file_id: int | None
    file_name: str | None
    nd: bool  # parameters are shown but cannot be changed
    parameters: list[dict[str, Any]]


class ParameterCheck(BaseModel):
    """Parameter values to check against a design's Customizer schema."""

    model_config = ConfigDict(extra="forbid")

    file_id: BodyId | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class ParameterValues(BaseModel):
    """Checked values: every parameter, and which differ from the design's defaults."""

    design_id: int
    file_id: int | None
    values: dict[str, Any]
    changed: list[str]
