"""Dashboard page of the monthly statement (summed from the usage log).

Members see their own; admins pick any member's and see every member's totals for the month.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role
from microfactory.costs import service as cost_service
from microfactory.deps import Now, SessionDep, ShopTz
from microfactory.usage import reports
from microfactory.web import WebMember, render

router = APIRouter(include_in_schema=False)


@router.get("/statement", response_class=HTMLResponse)
async def statement_page(
    request: Request,
    session: SessionDep,
    user: WebMember,
    tz: ShopTz,
    now: Now,
    month: Annotated[str | None, Query(max_length=7)] = None,
    member: Annotated[str, Query(max_length=12)] = "",
) -> HTMLResponse:
    """Show a monthly statement: the member's own, or for admins any member's."""
    month = month or cost_service.current_month(now, tz)
    shop_wide = user.role is Role.ADMIN
    member_id = int(member) if shop_wide and member.isdigit() and len(member) <= 9 else user.id
    data = await cost_service.statement(
        session=session, viewer=user, user_id=member_id, month=month, tz=tz
    )
    first = dt.date.fromisoformat(month + "-01")
    prev = (first - dt.timedelta(days=1)).strftime("%Y-%m")
    nxt = (first + dt.timedelta(days=32)).strftime("%Y-%m")
    context: dict[str, Any] = {
        "st": data,
        "prev": prev,
        "next": nxt,
        "tz": tz,
        "shop_wide": shop_wide,
        "member_id": member_id,
    }
    if shop_wide:
        # Every member with usage this month, with their totals (one statement each).
        start, end = reports.month_bounds(month, tz)
        used = await reports.summary(
            session=session, user=user, start=start, end=end, group_by="member"
        )
        context["members"] = {
            u.id: u.username for u in await account_service.list_users(session=session)
        }
        context["totals"] = [
            await cost_service.statement(
                session=session, viewer=user, user_id=row["user_id"], month=month, tz=tz
            )
            for row in used
        ]
    return render(request, "statement.html", context)
