"""The outbox: every message the shop sends a member, kept whether or not it is delivered
elsewhere, the shop's push channels, each member's choices, and one delivery row per channel."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from microfactory.db import Base, UTCDateTime, utcnow


class Notification(Base):
    """One message to one member: a confirmation, reminder, release, cancellation, job news."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_user_created", "user_id", "created_at"),
        Index("ix_notifications_sent_at", "sent_at"),
        Index("ix_notifications_user_read", "user_id", "read_at"),
        # One message per event and person: a re-delivered event (a retry, a restart) is a
        # no-op. NULL keys (the booking messages) are never equal, so they are not limited.
        UniqueConstraint("user_id", "dedupe_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # booking_confirmed, job_finished, bed_clear...
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text, default="")
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id", ondelete="SET NULL"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    dedupe_key: Mapped[str | None] = mapped_column(String(120))  # "job-event:17:job_finished"
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # first delivered outside
    read_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # seen on the dashboard
    attempts: Mapped[int] = mapped_column(default=0)  # delivery attempts, over all channels
    last_error: Mapped[str | None] = mapped_column(String(500))  # the last failure, redacted


class NotificationChannel(Base):
    """A push channel of the shop, set up by an admin: an apprise URL (it holds secrets)."""

    __tablename__ = "notification_channels"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)  # "Shop ntfy", shown to members
    url: Mapped[str] = mapped_column(Text)  # never logged, never shown back in full
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class NotificationPreference(Base):
    """What a member wants to hear about, and where. No row: every event, by email."""

    __tablename__ = "notification_preferences"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    events: Mapped[list[str]] = mapped_column(JSON, default=list)  # approved, started, ...
    email: Mapped[bool] = mapped_column(default=True)
    channel_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the shop's channels
    own_url: Mapped[str | None] = mapped_column(Text)  # the member's apprise URL (a secret)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class NotificationDelivery(Base):
    """One message to one channel: the outbox row the sender claims, retries and records.

    The address is looked up when sending (the member's email, the channel's URL), so no
    secret is copied here and a changed address is used from the next attempt on.
    """

    __tablename__ = "notification_deliveries"
    __table_args__ = (Index("ix_notification_deliveries_due", "done_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(16))  # "email", "shop" or "own"
    channel_id: Mapped[int | None] = mapped_column(
        ForeignKey("notification_channels.id", ondelete="CASCADE")
    )
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # sent or given up
    last_error: Mapped[str | None] = mapped_column(String(500))  # redacted: no URL, no password
