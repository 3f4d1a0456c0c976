"""Notification request and response bodies."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from microfactory.types import Id

EventName = Literal["approved", "started", "finished", "failed", "waiting", "bed_clear"]


class NotificationRead(BaseModel):
    """A message in a member's outbox."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    subject: str
    body: str
    booking_id: int | None
    created_at: dt.datetime
    sent_at: dt.datetime | None
    read_at: dt.datetime | None


class NotificationsMarked(BaseModel):
    """How many messages were marked read."""

    marked: int


class UnreadCount(BaseModel):
    """How many messages the caller has not seen (the nav's badge)."""

    unread: int


class ChannelCreate(BaseModel):
    """A push channel for the shop: a name members see, and an apprise URL (a secret)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    url: str = Field(min_length=3, max_length=2000, description="an apprise URL, e.g. ntfy://t")


class ChannelRead(BaseModel):
    """A shop channel as shown back: its URL masked (apprise's privacy form)."""

    id: int
    name: str
    url_masked: str
    enabled: bool


class ChannelOption(BaseModel):
    """A shop channel a member may pick."""

    id: int
    name: str


class PreferencesUpdate(BaseModel):
    """A member's choices: which events, by email, and to which push channels."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventName]
    email: StrictBool = True
    channel_ids: list[Id] = Field(default_factory=list, max_length=50)
    own_url: str | None = Field(
        None, max_length=2000, description="the member's own apprise URL, if the shop allows it"
    )
    keep_own_url: StrictBool = Field(
        False, description="keep the stored own URL when own_url is empty (it is never shown)"
    )


class PreferencesRead(BaseModel):
    """A member's choices, and what they can choose from."""

    events: list[str]
    email: bool
    channel_ids: list[int]
    own_url_masked: str | None
    available_events: list[str]
    available_channels: list[ChannelOption]
    own_urls_allowed: bool
    email_configured: bool
    has_email_address: bool
