"""Usage report endpoints: members see their own usage, operators everyone's."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from fastapi.responses import Response

from microfactory.deps import AnyUser, Now, SessionDep, ShopTz, StaffUser
from microfactory.types import MONTH_PATTERN, Day, Id, Timestamp
from microfactory.usage import reports
from microfactory.usage.csvout import CSV_RESPONSES, csv_response
from microfactory.usage.schemas import CorrectionCreate, UsageRead, UsageSummaryRow, UtilisationRow

router = APIRouter(prefix="/api/v1/usage", tags=["usage"])
Month = Annotated[str | None, Query(pattern=MONTH_PATTERN, description="local month, YYYY-MM")]
Format = Literal["json", "csv"]
ENTRY_FIELDS = list(UsageRead.model_fields)
SUMMARY_FIELDS = list(UsageSummaryRow.model_fields)


@router.get("", response_model=list[UsageRead] | list[UsageSummaryRow], responses=CSV_RESPONSES)
async def usage(
    session: SessionDep,
    user: AnyUser,
    tz: ShopTz,
    now: Now,
    start: Timestamp | None = None,
    end: Timestamp | None = None,
    month: Month = None,
    user_id: Id | None = None,
    machine_id: Id | None = None,
    group_by: Literal["member", "machine", "member_machine"] | None = None,
    format: Format = "json",
) -> Response | list[UsageRead] | list[UsageSummaryRow]:
    """Return the usage log for a period (default: this month), or sums with `group_by`."""
    start_at, end_at = reports.resolve_period(start=start, end=end, month=month, tz=tz, now=now)
    if group_by is None:
        records = await reports.entries(
            session=session,
            user=user,
            start=start_at,
            end=end_at,
            user_id=user_id,
            machine_id=machine_id,
        )
        reads = [UsageRead.model_validate(r) for r in records]
        if format == "csv":
            return csv_response(
                "usage.csv",
                ENTRY_FIELDS,
                ([getattr(r, f) for f in ENTRY_FIELDS] for r in reads),
            )
        return reads
    rows = await reports.summary(
        session=session,
        user=user,
        start=start_at,
        end=end_at,
        group_by=group_by,
        user_id=user_id,
        machine_id=machine_id,
    )
    summaries = [UsageSummaryRow.model_validate(r) for r in rows]
    if format == "csv":
        return csv_response(
            f"usage-by-{group_by}.csv",
            SUMMARY_FIELDS,
            ([getattr(r, f) for f in SUMMARY_FIELDS] for r in summaries),
        )
    return summaries


@router.get("/utilisation", response_model=list[UtilisationRow], responses=CSV_RESPONSES)
async def utilisation(
    session: SessionDep,
    _user: AnyUser,
    tz: ShopTz,
    now: Now,
    first_day: Day | None = None,
    days: Annotated[int, Query(ge=1, le=reports.MAX_UTILISATION_DAYS)] = 7,
    machine_id: Id | None = None,
    format: Format = "json",
) -> Response | list[UtilisationRow]:
    """Return each machine's active hours per local day as a share of the opening hours."""
    first = first_day or (now.astimezone(tz).date() - dt.timedelta(days=days - 1))
    rows = [
        UtilisationRow.model_validate(r)
        for r in await reports.utilisation(
            session=session, tz=tz, first_day=first, days=days, machine_id=machine_id
        )
    ]
    if format == "csv":
        fields = list(UtilisationRow.model_fields)
        return csv_response(
            "utilisation.csv", fields, ([getattr(r, f) for f in fields] for r in rows)
        )
    return rows


@router.post(
    "/{record_id:int}/corrections", response_model=UsageRead, status_code=status.HTTP_201_CREATED
)
async def correct(
    record_id: Id, body: CorrectionCreate, session: SessionDep, user: StaffUser
) -> UsageRead:
    """Append a compensating entry to a usage record (operators); nothing is ever edited."""
    record = await reports.correct(
        session=session,
        record_id=record_id,
        operator=user,
        active_s=body.active_s,
        material_g=body.material_g,
        note=body.note,
    )
    return UsageRead.model_validate(record)
