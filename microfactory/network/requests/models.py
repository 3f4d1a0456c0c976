"""A fabrication request between two shops, its append-only message log, and pinned peers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from microfactory.db import Base, UTCDateTime, utcnow


class FabricationRequest(Base):
    """One request, as the sending shop (outgoing) or the receiving shop (incoming) keeps it."""

    __tablename__ = "network_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # the request's UUID
    direction: Mapped[str] = mapped_column(String(8))  # outgoing (at A), incoming (at B)
    state: Mapped[str] = mapped_column(String(16), index=True)
    peer_shop_id: Mapped[str] = mapped_column(String(64))  # the other shop's key thumbprint
    peer_url: Mapped[str] = mapped_column(String(500))
    design_hash: Mapped[str] = mapped_column(String(64))
    design_title: Mapped[str] = mapped_column(String(200), default="")
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    material: Mapped[str | None] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(default=1)
    due_date: Mapped[str] = mapped_column(String(10))  # ISO 8601 date
    requester: Mapped[str] = mapped_column(String(64))  # pseudonymous id, never a username
    contact: Mapped[str | None] = mapped_column(String(200))  # only if the member shares it
    member_id: Mapped[int | None] = mapped_column(  # at A: the member it was sent for
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    job_id: Mapped[int | None] = mapped_column(  # at B: the job it became
        ForeignKey("jobs.id", ondelete="SET NULL")
    )
    design_id: Mapped[int | None] = mapped_column(ForeignKey("designs.id", ondelete="SET NULL"))
    quote: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    outcome: Mapped[str | None] = mapped_column(String(8))  # good, bad
    # At B, for a counter-offer: what accepting it will do (the Accept form's fields and the
    # operator who countered), so A's agreement makes the job without anyone at B.
    terms: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_peer_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    messages: Mapped[list[RequestMessage]] = relationship(
        order_by="RequestMessage.id", lazy="selectin", cascade="all, delete-orphan"
    )


class RequestMessage(Base):
    """One signed message of a request, sent or received: never changed once written."""

    __tablename__ = "network_request_messages"
    __table_args__ = (Index("ix_network_request_messages_request_id_id", "request_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("network_requests.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    direction: Mapped[str] = mapped_column(String(8))  # sent, received
    kind: Mapped[str] = mapped_column(String(16))  # request, accepted, countered, ...
    sequence: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    jws: Mapped[str] = mapped_column(Text)
    # For a sent message: how delivering it went (HTTP status, or the error).
    delivery: Mapped[str | None] = mapped_column(String(300))
    outbox: Mapped[OutboxItem | None] = relationship(lazy="selectin", uselist=False)


class OutboxItem(Base):
    """A sent message still to deliver to the other shop, retried with backoff until taken.

    Written in the same transaction as the message, so a message is never signed without
    being delivered eventually (across restarts); delivered in order per request.
    """

    __tablename__ = "network_outbox"
    __table_args__ = (Index("ix_network_outbox_state_next_attempt_at", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("network_request_messages.id", ondelete="CASCADE"), unique=True
    )
    request_id: Mapped[str] = mapped_column(String(36), index=True)
    url: Mapped[str] = mapped_column(String(600))
    # pending (to deliver), delivered, refused (a 4xx: final), expired (never taken in time)
    state: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())  # the message's expiresAt
    note: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class PeerKey(Base):
    """A shop's key pinned on first use, by the base URL it says it serves."""

    __tablename__ = "network_peer_keys"

    url: Mapped[str] = mapped_column(String(500), primary_key=True)
    shop_id: Mapped[str] = mapped_column(String(64))
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    pinned_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
