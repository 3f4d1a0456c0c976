"""The notification API: the unread count, a member's choices, and the shop's push channels.

(Listing and marking messages read stay at `GET /api/v1/notifications` and
`POST /api/v1/notifications/read`.)
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts.models import User
from microfactory.config import Settings
from microfactory.deps import AdminUser, AnyUser, SessionDep, SettingsDep
from microfactory.notifications import push, service
from microfactory.notifications.models import NotificationChannel
from microfactory.notifications.schemas import (
    ChannelCreate,
    ChannelOption,
    ChannelRead,
    PreferencesRead,
    PreferencesUpdate,
    UnreadCount,
)
from microfactory.types import Id

router = APIRouter(prefix="/api/v1/notifications", tags=["notifications"])


@router.get("/unread", response_model=UnreadCount)
async def unread(session: SessionDep, user: AnyUser) -> UnreadCount:
    """Return how many of the caller's messages are unread."""
    return UnreadCount(unread=await service.unread_count(session=session, user_id=user.id))


async def preferences_read(
    *, session: AsyncSession, user: User, settings: Settings
) -> PreferencesRead:
    """Return a member's choices with what they may choose from."""
    choices = await service.choices_for(session=session, user_id=user.id)
    channels = await service.list_channels(session=session, enabled_only=True)
    return PreferencesRead(
        events=[e for e in service.EVENTS if e in choices.events],
        email=choices.email,
        channel_ids=sorted(choices.channel_ids),
        own_url_masked=push.masked(choices.own_url) if choices.own_url else None,
        available_events=list(service.EVENTS),
        available_channels=[ChannelOption(id=c.id, name=c.name) for c in channels],
        own_urls_allowed=settings.notify_member_urls,
        email_configured=bool(settings.smtp_url),
        has_email_address=bool(user.email),
    )


@router.get("/preferences", response_model=PreferencesRead)
async def get_preferences(
    session: SessionDep, user: AnyUser, settings: SettingsDep
) -> PreferencesRead:
    """Return the caller's notification choices."""
    return await preferences_read(session=session, user=user, settings=settings)


@router.put("/preferences", response_model=PreferencesRead)
async def put_preferences(
    body: PreferencesUpdate, session: SessionDep, user: AnyUser, settings: SettingsDep
) -> PreferencesRead:
    """Store the caller's choices: events, email, the shop's channels, their own URL."""
    await service.save_choices(
        session=session, user_id=user.id, settings=settings, events=body.events,
        email=body.email, channel_ids=body.channel_ids, own_url=body.own_url,
        keep_own_url=body.keep_own_url,
    )  # fmt: skip
    await session.commit()
    return await preferences_read(session=session, user=user, settings=settings)


def channel_read(channel: NotificationChannel) -> ChannelRead:
    """Return a channel as it may be shown: never its full URL."""
    return ChannelRead(
        id=channel.id, name=channel.name, url_masked=push.masked(channel.url),
        enabled=channel.enabled,
    )  # fmt: skip


@router.get("/channels", response_model=list[ChannelRead])
async def list_channels(session: SessionDep, _admin: AdminUser) -> list[ChannelRead]:
    """List the shop's push channels, URLs masked (admins)."""
    return [channel_read(c) for c in await service.list_channels(session=session)]


@router.post("/channels", response_model=ChannelRead, status_code=status.HTTP_201_CREATED)
async def add_channel(body: ChannelCreate, session: SessionDep, _admin: AdminUser) -> ChannelRead:
    """Add a push channel to the shop (admins); its URL is checked, stored, never shown."""
    channel = await service.add_channel(session=session, name=body.name, url=body.url)
    await session.commit()
    return channel_read(channel)


@router.delete("/channels/{channel_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_channel(channel_id: Id, session: SessionDep, _admin: AdminUser) -> Response:
    """Remove a push channel (admins)."""
    await service.delete_channel(session=session, channel_id=channel_id)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
