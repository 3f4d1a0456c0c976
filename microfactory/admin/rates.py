"""Rates and plans admin page: hourly rates per machine kind, material prices, plans."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy import select

from microfactory.accounts import service as account_service
from microfactory.admin.forms import FormState
from microfactory.costs import service as cost_service
from microfactory.costs.models import PlanMembership
from microfactory.costs.schemas import PlanCreate
from microfactory.deps import SessionDep
from microfactory.errors import DomainError
from microfactory.machines.models import MachineKind
from microfactory.types import Id
from microfactory.web import CsrfChecked, WebAdmin, redirect, render

router = APIRouter(include_in_schema=False)
Typed = Annotated[str, Form(max_length=100)]
MAX_CENTS_PER_HOUR = 10**7
MAX_CENTS_PER_KG = 10**8


def _money(value: str, field: str, state: FormState, *, scale: int = 100) -> int | None:
    """Read a price such as 4.50 (or 4,50) as whole cents times `scale` / 100."""
    text = value.strip().replace(",", ".")
    if not text:
        state.errors[field] = "fill this in, such as 4.50 (0 for free)"
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:
        state.errors[field] = "write an amount of money, such as 4.50"
        return None
    if not amount.is_finite() or amount < 0:
        state.errors[field] = "write an amount of money of 0 or more, such as 4.50"
        return None
    if amount > 10**9:  # past every limit below; Decimal cannot round 40-digit numbers
        state.errors[field] = "this is far more than any price: check the amount"
        return None
    return int((amount * scale).quantize(Decimal(1)))


async def _page(
    request: Request,
    session: SessionDep,
    *,
    state: FormState | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    state = state or FormState()
    table = await cost_service.rates(session=session)
    plans = await cost_service.list_plans(session=session)
    users = await account_service.list_users(session=session)
    memberships = {
        m.user_id: m.plan_id for m in (await session.execute(select(PlanMembership))).scalars()
    }
    context: dict[str, Any] = {
        "kinds": list(MachineKind),
        "kind_rates": table["machine_kinds"],
        "material_rates": sorted(table["materials"].items()),
        "plans": plans,
        "plan_names": {p.id: p.name for p in plans},
        "users": users,
        "memberships": memberships,
        "form": state,
        "notice": notice,
        "error": state.summary() if state.refused else None,
    }
    return render(request, "admin_rates.html", context, status_code=status_code)


@router.get("/admin/rates", response_class=HTMLResponse)
async def rates_page(
    request: Request, session: SessionDep, _admin: WebAdmin, done: str | None = None
) -> HTMLResponse:
    """Show the shop's rates and membership plans (admins)."""
    notice = {
        "kind": "Hourly rate saved.",
        "material": "Material price saved.",
        "plan": "Plan created.",
        "plan-saved": "Plan saved.",
        "plan-deleted": "Plan deleted.",
        "member": "Membership saved.",
    }.get(done or "")
    return await _page(request, session, notice=notice)


@router.post("/admin/rates/machine-kinds", response_class=HTMLResponse)
async def set_kind_rate(
    request: Request,
    session: SessionDep,
    _admin: WebAdmin,
    _csrf: CsrfChecked,
    kind: Typed = "",
    per_hour: Typed = "",
) -> Response:
    """Set what an hour on a kind of machine costs (admins)."""
    state = FormState(f"kind:{kind}", {"kind": kind, "per_hour": per_hour})
    if kind not in {k.value for k in MachineKind}:
        state.general.append("choose a kind of machine")
    cents = _money(per_hour, "per_hour", state)
    if cents is not None and cents > MAX_CENTS_PER_HOUR:
        state.errors["per_hour"] = f"must be at most {MAX_CENTS_PER_HOUR // 100}"
    if state.refused or cents is None:
        return await _page(request, session, state=state, status_code=422)
    await cost_service.set_machine_rate(
        session=session, kind=MachineKind(kind), cents_per_hour=cents
    )
    return redirect("/admin/rates?done=kind")


@router.post("/admin/rates/materials", response_class=HTMLResponse)
async def set_material_rate(
    request: Request,
    session: SessionDep,
    _admin: WebAdmin,
    _csrf: CsrfChecked,
    material: Typed = "",
    per_gram: Typed = "",
) -> Response:
    """Set what a gram of a material costs (stored per kilogram) (admins)."""
    name = material.strip()
    state = FormState("material", {"material": material, "per_gram": per_gram})
    if not name:
        state.errors["material"] = "fill this in, such as PLA"
    elif len(name) > 64:
        state.errors["material"] = "write at most 64 characters"
    # A price per gram in money, stored as cents per kilogram: 0.03 per g is 3000 cents/kg.
    cents_per_kg = _money(per_gram, "per_gram", state, scale=100 * 1000)
    if cents_per_kg is not None and cents_per_kg > MAX_CENTS_PER_KG:
        state.errors["per_gram"] = f"must be at most {MAX_CENTS_PER_KG // 100_000}"
    if state.refused or cents_per_kg is None:
        return await _page(request, session, state=state, status_code=422)
    await cost_service.set_material_rate(session=session, material=name, cents_per_kg=cents_per_kg)
    return redirect("/admin/rates?done=material")


def _plan_in(
    state: FormState, name: str, included_hours: str, monthly_fee: str
) -> PlanCreate | None:
    """Read a plan form in plain words; None (with the errors in `state`) if refused."""
    fee = _money(monthly_fee or "0", "monthly_fee", state)
    hours_text = (included_hours or "0").strip().replace(",", ".")
    try:
        hours = float(hours_text)
    except ValueError:
        state.errors["included_hours"] = "write a number of hours, such as 10"
        hours = 0.0
    if state.refused:
        return None
    try:
        return PlanCreate(
            name=name.strip(), included_hours_per_month=hours, monthly_fee_cents=fee or 0
        )
    except ValidationError as exc:
        state.refuse(
            exc,
            rename={
                "included_hours_per_month": "included_hours",
                "monthly_fee_cents": "monthly_fee",
            },
        )
        return None


def _name_taken(state: FormState, exc: DomainError) -> None:
    state.refuse(exc)
    if "already exists" in exc.detail:
        state.errors["name"] = "another plan has this name"
        state.general.clear()


@router.post("/admin/rates/plans", response_class=HTMLResponse)
async def create_plan(
    request: Request,
    session: SessionDep,
    _admin: WebAdmin,
    _csrf: CsrfChecked,
    name: Typed = "",
    included_hours: Typed = "",
    monthly_fee: Typed = "",
) -> Response:
    """Create a membership plan with hours included each month (admins)."""
    typed = {"name": name, "included_hours": included_hours, "monthly_fee": monthly_fee}
    state = FormState("plan", typed)
    plan_in = _plan_in(state, name, included_hours, monthly_fee)
    if plan_in is not None:
        try:
            await cost_service.create_plan(session=session, plan_in=plan_in)
        except DomainError as exc:
            await session.rollback()  # a refused flush leaves the transaction unusable
            _name_taken(state, exc)
        else:
            return redirect("/admin/rates?done=plan")
    return await _page(request, session, state=state, status_code=422)


@router.post("/admin/rates/plans/{plan_id:int}", response_class=HTMLResponse)
async def update_plan(
    request: Request,
    plan_id: Id,
    session: SessionDep,
    _admin: WebAdmin,
    _csrf: CsrfChecked,
    name: Typed = "",
    included_hours: Typed = "",
    monthly_fee: Typed = "",
) -> Response:
    """Change a plan's name, included hours or fee (admins)."""
    typed = {"name": name, "included_hours": included_hours, "monthly_fee": monthly_fee}
    state = FormState(f"plan-{plan_id}", typed)
    plan_in = _plan_in(state, name, included_hours, monthly_fee)
    if plan_in is not None:
        try:
            await cost_service.update_plan(session=session, plan_id=plan_id, plan_in=plan_in)
        except DomainError as exc:
            await session.rollback()
            _name_taken(state, exc)
        else:
            return redirect("/admin/rates?done=plan-saved")
    return await _page(request, session, state=state, status_code=422)


@router.post("/admin/rates/plans/{plan_id:int}/delete", response_class=HTMLResponse)
async def delete_plan(
    request: Request, plan_id: Id, session: SessionDep, _admin: WebAdmin, _csrf: CsrfChecked
) -> Response:
    """Delete a plan nobody is on; otherwise say who must be moved first (admins)."""
    state = FormState(f"plan-{plan_id}", {})
    try:
        await cost_service.delete_plan(session=session, plan_id=plan_id)
    except DomainError as exc:
        state.refuse(exc)
        return await _page(request, session, state=state, status_code=exc.status_code)
    return redirect("/admin/rates?done=plan-deleted")


@router.post("/admin/rates/memberships", response_class=HTMLResponse)
async def set_membership(
    request: Request,
    session: SessionDep,
    _admin: WebAdmin,
    _csrf: CsrfChecked,
    user_id: Typed = "",
    plan_id: Typed = "",
) -> Response:
    """Put a member on a plan, or on none (admins)."""
    state = FormState("member", {"user_id": user_id, "plan_id": plan_id})
    # Ids past 9 digits cannot be ours (and past 2**63 the database refuses them).
    if not user_id.isdigit() or len(user_id) > 9:
        state.errors["user_id"] = "choose a member"
    if plan_id and (not plan_id.isdigit() or len(plan_id) > 9):
        state.errors["plan_id"] = "choose a plan"
    if not state.refused:
        try:
            await cost_service.set_membership(
                session=session, user_id=int(user_id), plan_id=int(plan_id) if plan_id else None
            )
        except DomainError as exc:
            state.refuse(exc)
        else:
            return redirect("/admin/rates?done=member")
    return await _page(request, session, state=state, status_code=422)
