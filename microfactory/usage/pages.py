"""Dashboard page of the usage log: a member's month and every machine's utilisation."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role
from microfactory.deps import Now, SessionDep, ShopTz
from microfactory.machines import service as machine_service
from microfactory.usage import reports
from microfactory.web import WebMember, render

router = APIRouter(include_in_schema=False)


def _id(value: str) -> int | None:
    """Read an id from a filter; anything else (empty, "all", a typo) means no filter."""
    return int(value) if value.isdigit() and len(value) <= 9 else None


@router.get("/usage", response_class=HTMLResponse)
async def usage_page(
    request: Request,
    session: SessionDep,
    user: WebMember,
    tz: ShopTz,
    now: Now,
    month: Annotated[str | None, Query(max_length=7)] = None,
    member: Annotated[str, Query(max_length=12)] = "",
    machine: Annotated[str, Query(max_length=12)] = "",
) -> HTMLResponse:
    """Show the member's usage this month and every machine's utilisation over 14 days.

    Admins see the whole shop's: every member and machine, filtered by member and machine.
    """

    month = month or now.astimezone(tz).strftime("%Y-%m")
    start, end = reports.month_bounds(month, tz)
    shop_wide = user.role is Role.ADMIN
    member_id = _id(member) if shop_wide else user.id
    machine_id = _id(machine) if shop_wide else None
    records = await reports.entries(
        session=session,
        user=user,
        start=start,
        end=end,
        user_id=member_id,
        machine_id=machine_id,
    )
    by_machine = await reports.summary(
        session=session,
        user=user,
        start=start,
        end=end,
        group_by="member_machine" if shop_wide else "machine",
        user_id=member_id,
        machine_id=machine_id,
    )
    days = 14
    first = now.astimezone(tz).date() - dt.timedelta(days=days - 1)
    util = await reports.utilisation(session=session, tz=tz, first_day=first, days=days)
    charts: dict[int, dict[str, Any]] = {}
    for row in util:
        chart = charts.setdefault(
            row["machine_id"], {"name": row["machine_name"], "bars": [], "used": 0.0, "open": 0.0}
        )
        chart["bars"].append(row)
        chart["used"] += row["used_h"]
        chart["open"] += row["open_h"]
    machines = {m.id: m.name for m in await machine_service.list_machines(session=session)}
    return render(
        request,
        "usage.html",
        {
            "month": month,
            "records": records,
            "by_machine": by_machine,
            "charts": list(charts.values()),
            "machines": machines,
            "shop_wide": shop_wide,
            "members": (
                {u.id: u.username for u in await account_service.list_users(session=session)}
                if shop_wide
                else {}
            ),
            "member_id": member_id,
            "machine_id": machine_id,
            "csv_query": urlencode(
                {
                    k: v
                    for k, v in {
                        "month": month,
                        "user_id": member_id if shop_wide else None,
                        "machine_id": machine_id,
                        "format": "csv",
                    }.items()
                    if v is not None
                }
            ),
            "tz": tz,
            "first": first,
            "days": days,
        },
    )
