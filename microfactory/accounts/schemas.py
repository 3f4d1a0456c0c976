"""Account request and response bodies."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from microfactory.accounts.models import Role, TokenKind
from microfactory.accounts.throttle import LockoutKind

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{2,64}$"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class UserCreate(BaseModel):
    """A new user, created by an admin."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=8, max_length=256)
    role: Role = Role.MEMBER
    full_name: str = Field("", max_length=200)
    email: str | None = Field(None, max_length=254, pattern=EMAIL_PATTERN)
    trusted: bool = False


class UserUpdate(BaseModel):
    """Changes an admin makes to a user."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    full_name: str | None = Field(None, max_length=200)
    email: str | None = Field(None, max_length=254, pattern=EMAIL_PATTERN)
    is_active: bool | None = None
    trusted: bool | None = None
    password: str | None = Field(None, min_length=8, max_length=256)


class UserRead(BaseModel):
    """A user as the API shows it (never the password hash)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    full_name: str
    email: str | None
    role: Role
    is_active: bool
    trusted: bool
    created_at: dt.datetime


class TokenResponse(BaseModel):
    """The OAuth2 token response."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth2 token type, not a secret)
    expires_in: int | None = None


class ApiTokenCreate(BaseModel):
    """A personal API token request."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=100)
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class ApiTokenRead(BaseModel):
    """A token as listed: never the token itself."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: TokenKind
    name: str
    prefix: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    last_used_from: str | None = Field(None, description="the client address of the last use")


class ApiTokenCreated(ApiTokenRead):
    """A newly created token: the only time its value is shown."""

    token: str


class LockoutRead(BaseModel):
    """A username or client address locked out after too many failed logins."""

    model_config = ConfigDict(from_attributes=True)

    kind: LockoutKind
    key: str = Field(description="the username or client address")
    failures: int = Field(description="failed logins within the window")
    retry_after_s: int = Field(description="seconds until logins are accepted again")
    until: dt.datetime


class LockoutLifted(BaseModel):
    """The answer to lifting a lockout."""

    kind: LockoutKind
    key: str
    was_locked_out: bool
