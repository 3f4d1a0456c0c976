"""Dashboard page of the member's monthly statement (summed from the usage log)."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from microfactory.costs import service as cost_service
from microfactory.deps import Now, SessionDep, ShopTz
from microfactory.web import WebMember, render

router = APIRouter(include_in_schema=False)


@router.get("/statement", response_class=HTMLResponse)
async def statement_page(
    request: Request,
    session: SessionDep,
    user: WebMember,
    tz: ShopTz,
    now: Now,
    month: str | None = None,
) -> HTMLResponse:
    """Show the member's monthly statement."""
    month = month or cost_service.current_month(now, tz)
    data = await cost_service.statement(
        session=session, viewer=user, user_id=user.id, month=month, tz=tz
    )
    first = dt.date.fromisoformat(month + "-01")
    prev = (first - dt.timedelta(days=1)).strftime("%Y-%m")
    nxt = (first + dt.timedelta(days=32)).strftime("%Y-%m")
    return render(request, "statement.html", {"st": data, "prev": prev, "next": nxt, "tz": tz})
