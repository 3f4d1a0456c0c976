"""Dashboard page of the materials inventory: members read it, operators keep it."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from microfactory.deps import SessionDep
from microfactory.errors import DomainError
from microfactory.machines import service as machine_service
from microfactory.materials import service
from microfactory.materials.schemas import UNITS, MaterialCreate, MaterialUpdate
from microfactory.types import Id
from microfactory.web import CsrfChecked, WebMember, WebStaff, redirect, render

router = APIRouter(include_in_schema=False)
PAGE = "/materials"


def _validation_text(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


async def _context(session: Any) -> dict[str, Any]:
    names = await service.machine_names(session=session)
    stocks = [service.to_read(s, names) for s in await service.list_stocks(session=session)]
    return {
        "stocks": stocks,
        "machines": await machine_service.list_machines(session=session),
        "units": UNITS,
    }


@router.get(PAGE, response_class=HTMLResponse)
async def materials_page(
    request: Request, session: SessionDep, user: WebMember, msg: str | None = None
) -> HTMLResponse:
    """Show the materials on hand (members), with forms to keep them (operators)."""
    ctx = await _context(session)
    return render(request, "materials.html", {**ctx, "msg": msg, "error": None})


def _fields(typed: dict[str, str]) -> dict[str, Any]:
    amount_text = typed.get("amount", "").strip()
    try:
        amount = float(amount_text) if amount_text else 0.0
    except ValueError:
        raise ValueError("amount must be a number, such as 750") from None
    machine = typed.get("machine_id", "").strip()
    if machine and not machine.isdigit():
        raise ValueError("machine must be one of the shop's machines")
    return {
        "material": typed.get("material", ""),
        "colour": typed.get("colour", ""),
        "amount": amount,
        "unit": typed.get("unit", "g"),
        "machine_id": int(machine) if machine else None,
        "notes": typed.get("notes", ""),
    }


async def _act(request: Request, session: Any, action: Any, done: str) -> Response:
    form = await request.form()
    typed = {k: str(v) for k, v in form.items() if k != "csrf_token"}
    try:
        await action(typed)
    except (ValidationError, ValueError, DomainError) as exc:
        if isinstance(exc, ValidationError):
            error, status = _validation_text(exc), 422
        elif isinstance(exc, DomainError):
            error, status = exc.detail, exc.status_code
        else:
            error, status = str(exc), 422
        await session.rollback()
        ctx = await _context(session)
        typed["form"] = request.url.path
        return render(
            request,
            "materials.html",
            {**ctx, "msg": None, "error": error, "typed": typed},
            status_code=status,
        )
    return redirect(PAGE + "?msg=" + quote(done))


@router.post(PAGE, response_class=HTMLResponse)
async def materials_add(
    request: Request, session: SessionDep, user: WebStaff, _csrf: CsrfChecked
) -> Response:
    """Add a stock of material (operators)."""

    async def action(typed: dict[str, str]) -> None:
        stock_in = MaterialCreate.model_validate(_fields(typed))
        await service.create(session=session, stock_in=stock_in)

    return await _act(request, session, action, "Material added.")


@router.post(PAGE + "/{stock_id}", response_class=HTMLResponse)
async def materials_edit(
    request: Request, stock_id: Id, session: SessionDep, user: WebStaff, _csrf: CsrfChecked
) -> Response:
    """Change the amount and the machine a stock is loaded on (operators)."""

    async def action(typed: dict[str, str]) -> None:
        stock = await service.get_or_raise(session=session, stock_id=stock_id)
        fields = _fields({**typed, "material": typed.get("material") or stock.material})
        await service.update(
            session=session, stock=stock, stock_in=MaterialUpdate.model_validate(fields)
        )

    return await _act(request, session, action, "Material updated.")


@router.post(PAGE + "/{stock_id}/remove", response_class=HTMLResponse)
async def materials_remove(
    request: Request, stock_id: Id, session: SessionDep, user: WebStaff, _csrf: CsrfChecked
) -> Response:
    """Remove a stock of material (operators)."""

    async def action(typed: dict[str, str]) -> None:
        stock = await service.get_or_raise(session=session, stock_id=stock_id)
        await service.delete(session=session, stock=stock)

    return await _act(request, session, action, "Material removed.")
