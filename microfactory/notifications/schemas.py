"""Notification response bodies."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict


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
