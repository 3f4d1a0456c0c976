"""The member's messages page: what the shop told them, newest first; opening it reads them."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from microfactory.deps import SessionDep, now
from microfactory.notifications import service
from microfactory.web import WebMember, render

router = APIRouter(include_in_schema=False)


@router.get("/notifications", response_class=HTMLResponse)
async def notifications_page(
    request: Request, session: SessionDep, user: WebMember
) -> HTMLResponse:
    """Show the member's messages, the unread ones marked, then mark them read."""
    notes = await service.list_for_user(session=session, user_id=user.id, limit=100)
    unread_ids = {n.id for n in notes if n.read_at is None}
    await service.mark_read(session=session, user_id=user.id, now=now(request))
    await session.commit()
    request.state.unread = 0  # seen now
    return render(request, "notifications.html", {"notes": notes, "unread_ids": unread_ids})
