"""Dashboard page of the usage log: a member's month and every machine's utilisation."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from microfactory.deps import Now, SessionDep, ShopTz
from microfactory.machines import service as machine_service
from microfactory.usage import reports
from microfactory.web import WebMember, render

router = APIRouter(include_in_schema=False)


@router.get("/usage", response_class=HTMLResponse)
async def usage_page(
    request: Request,
    session: SessionDep,
    user: WebMember,
    tz: ShopTz,
    now: Now,
    month: str | None = None,
) -> HTMLResponse:
    """Show the member's usage this month and every machine's utilisation over 14 days."""

    month = month or now.astimezone(tz).strftime("%Y-%m")
    start, end = reports.month_bounds(month, tz)
    records = await reports.entries(
        session=session, user=user, start=start, end=end, user_id=user.id
    )
    by_machine = await reports.summary(
        session=session, user=user, start=start, end=end, group_by="machine", user_id=user.id
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
            "tz": tz,
            "first": first,
            "days": days,
        },
    )
