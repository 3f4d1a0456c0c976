"""Cost endpoints: rates and plans (operators set them), statements (members see their own)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from fastapi.responses import Response

from microfactory.costs import service
from microfactory.costs.schemas import (
    MachineRateSet,
    MaterialRateSet,
    MembershipSet,
    PlanCreate,
    PlanRead,
    RatesRead,
    Statement,
    StatementLine,
)
from microfactory.deps import AnyUser, Now, SessionDep, ShopTz, StaffUser
from microfactory.machines.models import MachineKind
from microfactory.types import MONTH_PATTERN, Id
from microfactory.usage.csvout import CSV_RESPONSES, csv_response

router = APIRouter(prefix="/api/v1", tags=["costs"])
LINE_FIELDS = list(StatementLine.model_fields)


@router.get("/rates", response_model=RatesRead)
async def get_rates(session: SessionDep, _user: AnyUser) -> RatesRead:
    """Return the shop's rates."""
    return RatesRead.model_validate(await service.rates(session=session))


@router.put("/rates/machine-kinds/{kind}", response_model=RatesRead)
async def set_machine_rate(
    kind: MachineKind, body: MachineRateSet, session: SessionDep, _user: StaffUser
) -> RatesRead:
    """Set the hourly rate of a machine kind (operators)."""
    await service.set_machine_rate(session=session, kind=kind, cents_per_hour=body.cents_per_hour)
    return RatesRead.model_validate(await service.rates(session=session))


@router.put("/rates/materials/{material}", response_model=RatesRead)
async def set_material_rate(
    material: str,
    body: MaterialRateSet,
    session: SessionDep,
    _user: StaffUser,
) -> RatesRead:
    """Set the price of a material per kg (operators)."""
    await service.set_material_rate(
        session=session, material=material, cents_per_kg=body.cents_per_kg
    )
    return RatesRead.model_validate(await service.rates(session=session))


@router.get("/plans", response_model=list[PlanRead])
async def list_plans(session: SessionDep, _user: AnyUser) -> list[PlanRead]:
    """List membership plans."""
    return [PlanRead.model_validate(p) for p in await service.list_plans(session=session)]


@router.post("/plans", response_model=PlanRead, status_code=status.HTTP_201_CREATED)
async def create_plan(plan_in: PlanCreate, session: SessionDep, _user: StaffUser) -> PlanRead:
    """Create a membership plan (operators)."""
    return PlanRead.model_validate(await service.create_plan(session=session, plan_in=plan_in))


@router.put("/plans/{plan_id:int}", response_model=PlanRead)
async def update_plan(
    plan_id: Id, plan_in: PlanCreate, session: SessionDep, _user: StaffUser
) -> PlanRead:
    """Change a membership plan (operators)."""
    plan = await service.update_plan(session=session, plan_id=plan_id, plan_in=plan_in)
    return PlanRead.model_validate(plan)


@router.delete("/plans/{plan_id:int}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_plan(plan_id: Id, session: SessionDep, _user: StaffUser) -> Response:
    """Delete a membership plan that no member is on (operators)."""
    await service.delete_plan(session=session, plan_id=plan_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/plans/members/{user_id:int}", status_code=status.HTTP_204_NO_CONTENT)
async def set_membership(
    user_id: Id, body: MembershipSet, session: SessionDep, _user: StaffUser
) -> Response:
    """Put a member on a plan, or none (operators)."""
    await service.set_membership(session=session, user_id=user_id, plan_id=body.plan_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/statements", response_model=Statement, responses=CSV_RESPONSES)
async def get_statement(
    session: SessionDep,
    user: AnyUser,
    tz: ShopTz,
    now: Now,
    user_id: Id | None = None,
    month: Annotated[str | None, Query(pattern=MONTH_PATTERN)] = None,
    format: Literal["json", "csv"] = "json",
) -> Response | Statement:
    """Return a member's monthly statement (their own; operators any member's); CSV too."""
    data = await service.statement(
        session=session,
        viewer=user,
        user_id=user_id or user.id,
        month=month or service.current_month(now, tz),
        tz=tz,
    )
    statement = Statement.model_validate(data)
    if format == "csv":
        rows: list[list[object]] = [
            [getattr(line, f) for f in LINE_FIELDS] for line in statement.lines
        ]
        blank = [""] * (len(LINE_FIELDS) - 2)
        rows += [
            ["plan_fee", *blank, statement.plan_fee_cents],
            ["total", *blank, statement.total_cents],
        ]
        return csv_response(
            f"statement-{statement.username}-{statement.month}.csv", LINE_FIELDS, rows
        )
    return statement
