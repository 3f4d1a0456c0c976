"""Users and their API tokens."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import BigInteger, Enum, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from microfactory.db import Base, TimestampMixin, UTCDateTime, utcnow


class Role(StrEnum):
    """What a user may do; each role includes the ones before it."""

    MEMBER = "member"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Return the role's rank: member < operator < admin."""
        return _RANK[self]


_RANK = {Role.MEMBER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class TokenKind(StrEnum):
    """Where a token came from: a login (expires) or a personal API token (until revoked)."""

    LOGIN = "login"
    WEB = "web"
    PERSONAL = "personal"


class User(TimestampMixin, Base):
    """A member, operator or admin of the shop."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str | None] = mapped_column(String(254))
    role: Mapped[Role] = mapped_column(
        Enum(Role, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])
    )
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2id
    is_active: Mapped[bool] = mapped_column(default=True)
    trusted: Mapped[bool] = mapped_column(default=False)  # jobs auto-approved

    tokens: Mapped[list[ApiToken]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="raise"
    )

    @property
    def is_staff(self) -> bool:
        """Return whether the user is an operator or admin (they run the shop)."""
        return self.role in (Role.OPERATOR, Role.ADMIN)


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored, so a database leak reveals no token."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[TokenKind] = mapped_column(
        Enum(
            TokenKind, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]
        )
    )
    name: Mapped[str] = mapped_column(String(100), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # hex SHA-256
    prefix: Mapped[str] = mapped_column(String(16))  # shown to the user to tell tokens apart
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_used_from: Mapped[str | None] = mapped_column(String(64))  # client address, last use

    user: Mapped[User] = relationship(back_populates="tokens", lazy="raise")


class LoginFailure(Base):
    """One failed login in a throttle window, shared by every process on PostgreSQL.

    `key` is the `limits` library's key (kind, username or address, limit and window); rows
    older than the window are deleted as new failures arrive (accounts/throttle.py).
    """

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(400))
    at: Mapped[float] = mapped_column(Float(precision=53))  # Unix time, seconds
