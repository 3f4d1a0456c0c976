"""Machines admin pages: add, edit, disable, delete, test, slicer profile, limits, photos.

The pages call the machine services as the API routes do; after each commit the fleet picks
the change up (`sync`), and the live grid hears of a new machine from the event stream.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile as StarletteUpload

from microfactory import forms
from microfactory.admin.forms import FormState
from microfactory.db import utcnow
from microfactory.deps import SessionDep
from microfactory.errors import ConflictError, DomainError, NotFoundError
from microfactory.fabrication import service as slicer_service
from microfactory.machines import service as machine_service
from microfactory.machines.channel import CommandChannel
from microfactory.machines.models import Machine, MachineKind
from microfactory.machines.routes import announce_machine
from microfactory.machines.schemas import (
    BAUDRATES,
    CONNECTION_MODELS,
    Capabilities,
    MachineCreate,
    MachineUpdate,
)
from microfactory.middleware import size_text
from microfactory.types import Id
from microfactory.web import CsrfChecked, WebAdmin, WebMember, redirect, render

log = logging.getLogger("microfactory.admin")
router = APIRouter(include_in_schema=False)

# The drivers an admin picks from, with the connection fields each one has.
DRIVER_CHOICES = {
    "marlin": "Marlin over USB serial",
    "grbl": "GRBL over USB serial",
    "octoprint": "OctoPrint server",
    "moonraker": "Moonraker (Klipper)",
    "prusalink": "PrusaLink (Prusa MK4, XL, MINI, MK3)",
    "manual": "Manual (no driver: booked and logged only)",
    "sim-marlin": "Simulated Marlin printer",
    "sim-grbl": "Simulated GRBL machine",
}
SERIAL_DRIVERS = frozenset({"marlin", "grbl"})
# Per-axis motion limits an operator may override, as drivers.planner.MachineLimits names them.
AXES = ("x", "y", "z", "e")
AXIS_LIMITS = {
    "max_feedrate": "Max feed rate (mm/s)",
    "max_acceleration": "Max acceleration (mm/s²)",
    "max_jerk": "Max jerk (mm/s)",
}
SCALAR_LIMITS = {
    "print_acceleration": "Print acceleration (mm/s²)",
    "travel_acceleration": "Travel acceleration (mm/s²)",
    "junction_deviation": "Junction deviation (mm)",
}
PHOTO_TYPES = {b"\xff\xd8\xff": ".jpg", b"\x89PNG\r\n\x1a\n": ".png", b"RIFF": ".webp"}
PHOTO_NAME = re.compile(r"^(\d+)-[0-9a-f]{32}\.(jpg|png|webp)$")
MAX_PHOTOS = 12
MACHINE_FORM_NAMES = {"build_volume_mm": "volume_x", "baudrate": "baudrate", "port": "port"}


def _fleet(request: Request) -> CommandChannel:
    channel: CommandChannel = request.app.state.fleet
    return channel


def _photo_dir(request: Request) -> Path:
    return Path(request.app.state.settings.upload_dir) / "machine-photos"


def _photos(request: Request, machine_id: int) -> list[str]:
    folder = _photo_dir(request)
    if not folder.is_dir():
        return []
    return sorted(
        (p.name for p in folder.glob(f"{machine_id}-*") if PHOTO_NAME.match(p.name)),
        key=lambda n: (folder / n).stat().st_mtime,
    )


def card_photos(upload_dir: Path, machine_ids: list[int]) -> dict[int, str]:
    """Return each machine's first photo (the earliest uploaded), for the grid's cards.

    One listing of the folder for the whole grid, not one per machine.
    """
    folder = upload_dir / "machine-photos"
    wanted = set(machine_ids)
    first: dict[int, tuple[float, str]] = {}
    if not wanted or not folder.is_dir():
        return {}
    for entry in folder.iterdir():
        match = PHOTO_NAME.match(entry.name)
        if match is None or int(match.group(1)) not in wanted:
            continue
        try:
            mtime = entry.stat().st_mtime
        except FileNotFoundError:  # removed meanwhile
            continue
        mid = int(match.group(1))
        if mid not in first or (mtime, entry.name) < first[mid]:
            first[mid] = (mtime, entry.name)
    return {mid: name for mid, (_, name) in first.items()}


def _photo_limit(request: Request) -> int:
    # Their own limit (MICROFACTORY_MAX_PHOTO_BYTES); the upload middleware lets the form's
    # body be that plus room for its other fields, and refuses more with a page of its own.
    return int(request.app.state.settings.max_photo_bytes)


def _form_of(machine: Machine | None) -> dict[str, str]:
    """Return the edit form's values for a machine (never its secrets)."""
    if machine is None:
        return {"kind": "fdm_printer", "driver": "marlin", "baudrate": "115200"}
    conn = machine.connection or {}
    caps = machine.capabilities or {}
    return {
        "name": machine.name,
        "kind": machine.kind.value,
        "driver": machine.driver,
        "port": str(conn.get("port", "")),
        "baudrate": str(conn.get("baudrate", "115200")),
        "url": str(conn.get("url", "")),
        "api_key": "",  # a secret: never shown back
        "printer_port": str(conn.get("printer_port", "")),
        "username": str(conn.get("username", "")),  # PrusaLink's; its password is a secret
        "password": "",  # a secret: never shown back
        "volume_x": _num(machine.build_volume_x_mm),
        "volume_y": _num(machine.build_volume_y_mm),
        "volume_z": _num(machine.build_volume_z_mm),
        "make": str(caps.get("make") or ""),
        "model": str(caps.get("model") or ""),
        "materials": ", ".join(caps.get("materials") or []),
        "nozzle_diameter_mm": _num(caps.get("nozzle_diameter_mm")),
        "power_w": _num(machine.power_w),
        "maintenance": "on" if machine.maintenance else "",
    }


def _num(value: Any) -> str:
    if value is None or value == "":
        return ""
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


def _number(state: FormState, field: str) -> float | None:
    raw = state.typed.get(field, "").strip().replace(",", ".")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        state.errors[field] = "write a number, such as 2.5"
        return None
    return value


def _connection(state: FormState, driver: str, stored: Machine | None) -> dict[str, Any] | None:
    """Build and check the connection settings of the typed driver; None if refused."""
    typed = state.typed
    old = dict(stored.connection or {}) if stored is not None else {}
    same_driver = stored is not None and stored.driver == driver
    conn: dict[str, Any]
    if driver in SERIAL_DRIVERS:
        conn = {k: v for k, v in old.items() if same_driver and k not in ("port", "baudrate")}
        conn["port"] = typed.get("port", "").strip()
        baud = typed.get("baudrate", "").strip()
        if not baud.isdigit():
            state.errors["baudrate"] = f"choose one of {', '.join(map(str, BAUDRATES))}"
            return None
        conn["baudrate"] = int(baud)
    elif driver == "octoprint":
        conn = {k: v for k, v in old.items() if same_driver and k not in ("url", "printer_port")}
        conn["url"] = typed.get("url", "").strip()
        key = typed.get("api_key", "").strip()
        if key:
            conn["api_key"] = key
        elif not (same_driver and old.get("api_key")):
            state.errors["api_key"] = "fill this in: the API key from OctoPrint's settings"
            return None
        if typed.get("printer_port", "").strip():
            conn["printer_port"] = typed["printer_port"].strip()
    elif driver == "moonraker":
        conn = {k: v for k, v in old.items() if same_driver and k != "url"}
        conn["url"] = typed.get("url", "").strip()
        key = typed.get("api_key", "").strip()
        if key:  # optional: Moonraker lets its trusted clients in without one
            conn["api_key"] = key
    elif driver == "prusalink":
        conn = {
            k: v
            for k, v in old.items()
            if same_driver and k not in ("url", "username", "password", "api_key")
        }
        conn["url"] = typed.get("url", "").strip()
        username = typed.get("username", "").strip()
        password = typed.get("password", "")
        key = typed.get("api_key", "").strip()
        if username:
            conn["username"] = username
            # A blank password keeps the saved one, if it was for the same user.
            if password:
                conn["password"] = password
            elif same_driver and old.get("password") and old.get("username") == username:
                conn["password"] = old["password"]
            else:
                missing = "fill this in: the password on the printer's screen"
                state.errors.update(password=missing)
                return None
        if key:
            conn["api_key"] = key
        elif same_driver and old.get("api_key") and not username:
            conn["api_key"] = old["api_key"]
        if not username and "api_key" not in conn:
            state.errors["username"] = (
                "fill in PrusaLink's username and password (on the printer's screen: "
                "Settings > Network > PrusaLink), or its API key"
            )
            return None
    elif driver in ("sim-marlin", "sim-grbl"):
        conn = old if same_driver else {}  # a simulator's options are set through the API
    else:
        conn = {}
    try:
        model = CONNECTION_MODELS[driver]
        return model.model_validate(conn).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        state.refuse(exc)
        if "url" in state.errors:  # Pydantic's words are about URL parsing
            state.errors["url"] = (
                "write Moonraker's address, such as http://voron.local:7125"
                if driver == "moonraker"
                else "write OctoPrint's address, such as http://octopi.local"
            )
            if driver == "prusalink":
                state.errors["url"] = "write the printer's address, such as http://prusa-mk4.local"
        return None


def _machine_fields(state: FormState, stored: Machine | None) -> dict[str, Any] | None:
    """Turn the typed machine form into a MachineCreate's fields; None if refused."""
    typed = state.typed
    driver = typed.get("driver", "")
    if driver not in DRIVER_CHOICES:
        state.errors["driver"] = "choose a driver from the list"
        return None
    kind = typed.get("kind", "")
    if kind not in {k.value for k in MachineKind}:
        state.errors["kind"] = "choose a kind of machine"
    volume = [_number(state, f"volume_{axis}") for axis in "xyz"]
    nozzle = _number(state, "nozzle_diameter_mm")
    power = _number(state, "power_w")
    connection = _connection(state, driver, stored)
    if state.refused or connection is None:
        return None
    caps = dict(stored.capabilities or {}) if stored is not None else {}
    caps.update(
        make=typed.get("make", "").strip() or None,
        model=typed.get("model", "").strip() or None,
        materials=[m.strip() for m in typed.get("materials", "").split(",") if m.strip()],
        nozzle_diameter_mm=nozzle,
    )
    if any(v is not None for v in volume) and not all(v is not None for v in volume):
        state.errors["volume_x"] = "give all three sizes, or none"
        return None
    return {
        "name": typed.get("name", "").strip(),
        "kind": kind,
        "driver": driver,
        "connection": connection,
        "build_volume_mm": (
            {"x": volume[0], "y": volume[1], "z": volume[2]} if volume[0] is not None else None
        ),
        "capabilities": caps,
        "maintenance": typed.get("maintenance") == "on",
        "power_w": power,
    }


_VOLUME_RENAME = {"x": "volume_x", "y": "volume_y", "z": "volume_z"}


def _refuse_model(state: FormState, exc: ValidationError) -> None:
    """Put a MachineCreate/Update refusal next to the form's own fields."""
    moved: list[dict[str, Any]] = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        if loc[:1] == ["build_volume_mm"] and len(loc) > 1:
            moved.append({**error, "loc": (_VOLUME_RENAME.get(loc[1], "volume_x"),)})
        elif loc[:1] == ["capabilities"] and len(loc) > 1:
            moved.append({**error, "loc": (loc[1],)})
        else:
            moved.append(dict(error))
    fields, general = forms.plain_errors(moved)
    state.errors.update({k: v for k, v in fields.items() if k not in state.errors})
    state.general.extend(general)


async def _machine_page(
    request: Request,
    session: SessionDep,
    machine: Machine | None,
    *,
    state: FormState | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    state = state or FormState()
    context: dict[str, Any] = {
        "machine": machine,
        "drivers": DRIVER_CHOICES,
        "kinds": list(MachineKind),
        "baudrates": BAUDRATES,
        "form": state,
        "values": state.typed if state.name == "machine" and state.typed else _form_of(machine),
        "notice": notice,
        "error": state.summary() if state.refused else None,
    }
    if machine is not None:
        fleet = _fleet(request)
        context["status"] = fleet.status(machine)
        context["running"] = fleet.running_job(machine.id)
        context["has_key"] = bool((machine.connection or {}).get("api_key"))
        context["has_password"] = bool((machine.connection or {}).get("password"))  # PrusaLink
        limits = (machine.capabilities or {}).get("motion_limits") or None
        context["limits"] = limits
        context["limit_values"] = (
            state.typed if state.name == "limits" and state.typed else _limit_values(limits)
        )
        context["axes"] = AXES
        context["axis_limits"] = AXIS_LIMITS
        context["scalar_limits"] = SCALAR_LIMITS
        context["photos"] = _photos(request, machine.id)
        context["photo_limit_bytes"] = _photo_limit(request)
        context["photo_limit_text"] = size_text(_photo_limit(request))
        context["notes_value"] = (
            state.typed.get("notes", machine.notes) if state.name == "notes" else machine.notes
        )
        if machine.kind is MachineKind.FDM_PRINTER:
            profile = await slicer_service.read(session=session, machine=machine)
            context["profile"] = profile
            context["profile_text"] = (
                state.typed.get("profile", profile.profile)
                if state.name == "profile"
                else profile.profile
            )
    return render(request, "admin_machine.html", context, status_code=status_code)


def _limit_values(limits: dict[str, Any] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    if not limits:
        return values
    for key in AXIS_LIMITS:
        seq = limits.get(key)
        if isinstance(seq, list | tuple):
            for axis, value in zip(AXES, seq, strict=False):
                values[f"{key}_{axis}"] = _num(value)
    for key in SCALAR_LIMITS:
        if limits.get(key) is not None:
            values[key] = _num(limits[key])
    return values


@router.get("/admin/machines", response_class=HTMLResponse)
async def machines_admin(request: Request, session: SessionDep, _admin: WebAdmin) -> HTMLResponse:
    """List the shop's machines for admins, with links to edit them (admins)."""
    fleet = _fleet(request)
    machines = await machine_service.list_machines(session=session)
    rows = [(m, fleet.status(m), fleet.running_job(m.id)) for m in machines]
    return render(request, "admin_machines.html", {"rows": rows, "drivers": DRIVER_CHOICES})


@router.get("/admin/machines/new", response_class=HTMLResponse)
async def machine_new_page(request: Request, session: SessionDep, _admin: WebAdmin) -> HTMLResponse:
    """Show the form to add a machine (admins)."""
    return await _machine_page(request, session, None)


MachineField = Annotated[str, Field(max_length=300)]


class MachineFormFields(BaseModel):
    """The add and edit forms' fields, as typed (checked by `_machine_fields`)."""

    name: MachineField = ""
    kind: MachineField = ""
    driver: MachineField = ""
    port: MachineField = ""
    baudrate: MachineField = ""
    url: MachineField = ""
    api_key: MachineField = ""
    printer_port: MachineField = ""
    username: MachineField = ""  # PrusaLink
    password: MachineField = ""  # PrusaLink; a secret, never sent back
    volume_x: MachineField = ""
    volume_y: MachineField = ""
    volume_z: MachineField = ""
    make: MachineField = ""
    model: MachineField = ""
    materials: MachineField = ""
    nozzle_diameter_mm: MachineField = ""
    power_w: MachineField = ""
    maintenance: MachineField = ""


@router.post("/admin/machines/new", response_class=HTMLResponse)
async def machine_create(
    request: Request,
    session: SessionDep,
    _admin: WebAdmin,
    _csrf: CsrfChecked,
    form: Annotated[MachineFormFields, Form()],
) -> Response:
    """Add a machine; the fleet starts its supervisor once it is on record (admins)."""
    typed = form.model_dump()
    state_in = FormState("machine", dict(typed))
    data = _machine_fields(state_in, None)
    if data is not None:
        try:
            machine = await machine_service.create(
                session=session, machine_in=MachineCreate.model_validate(data)
            )
        except ValidationError as exc:
            _refuse_model(state_in, exc)
        except DomainError as exc:
            await session.rollback()  # a refused flush leaves the transaction unusable
            state_in.refuse(exc)
            if "already exists" in exc.detail:
                state_in.errors["name"] = "another machine has this name"
                state_in.general.clear()
        else:
            await session.commit()  # connect only once the machine is on record
            await _announce(request, machine)
            log.info("machine %s added by an admin (driver %s)", machine.name, machine.driver)
            return redirect(f"/admin/machines/{machine.id}?added=1")
    # What was typed comes back, except the API key: a secret is never sent to a browser.
    state = FormState(
        "machine", {**typed, "api_key": "", "password": ""}, state_in.errors, state_in.general
    )
    return await _machine_page(request, session, None, state=state, status_code=422)


async def _announce(request: Request, machine: Machine) -> None:
    """Start (or restart) the machine's supervisor and tell the live pages it is there."""
    try:
        await _fleet(request).sync(machine, machine.id)
    finally:  # the change is on record: every open grid and machine page hears of it
        announce_machine(request, machine, machine.id)


async def _get(session: SessionDep, machine_id: int) -> Machine:
    return await machine_service.get_or_raise(session=session, machine_id=machine_id)


@router.get("/admin/machines/{machine_id:int}", response_class=HTMLResponse)
async def machine_edit_page(
    request: Request,
    machine_id: Id,
    session: SessionDep,
    _admin: WebAdmin,
    added: str | None = None,
    done: str | None = None,
) -> HTMLResponse:
    """Show one machine's settings, connection test, profile, limits, photos, notes (admins)."""
    machine = await _get(session, machine_id)
    notice = {
        "saved": "Saved.",
        "enabled": "Enabled: it takes jobs again.",
        "disabled": "Disabled: it takes no jobs and is not connected.",
        "profile": "Slicer profile saved.",
        "profile-reset": "The generated slicer profile is used again.",
        "limits": "Motion limits saved: the machine's own reading no longer replaces them.",
        "limits-cleared": "Override removed: the limits the machine reports are used again.",
        "photo": "Photo added.",
        "photo-removed": "Photo removed.",
        "notes": "Notes saved.",
    }.get(done or "")
    if added:
        notice = f"{machine.name} was added. It is on the machine grid now."
    return await _machine_page(request, session, machine, notice=notice)


@router.post("/admin/machines/{machine_id:int}", response_class=HTMLResponse)
async def machine_update(
    request: Request,
    machine_id: Id,
    session: SessionDep,
    _admin: WebAdmin,
    _csrf: CsrfChecked,
    form: Annotated[MachineFormFields, Form()],
) -> Response:
    """Change a machine's settings; a blank API key keeps the saved one (admins)."""
    typed = form.model_dump()
    machine = await _get(session, machine_id)
    state_in = FormState("machine", dict(typed))
    data = _machine_fields(state_in, machine)
    if data is not None:
        running = _fleet(request).running_job(machine.id)
        if running is not None and (
            data["connection"] != (machine.connection or {}) or data["driver"] != machine.driver
        ):
            state_in.general.append(
                f"{machine.name} is running job {running}: its connection cannot change "
                "until the job has ended"
            )
        else:
            try:
                update = MachineUpdate.model_validate(data)
                await machine_service.update(session=session, machine=machine, machine_in=update)
            except ValidationError as exc:
                _refuse_model(state_in, exc)
            except DomainError as exc:
                state_in.refuse(exc)
                if "already exists" in exc.detail:
                    state_in.errors["name"] = "another machine has this name"
                    state_in.general.clear()
            else:
                await session.commit()
                await _announce(request, machine)
                return redirect(f"/admin/machines/{machine.id}?done=saved")
        await session.rollback()
        machine = await _get(session, machine_id)
    state = FormState(
        "machine", {**typed, "api_key": "", "password": ""}, state_in.errors, state_in.general
    )
    return await _machine_page(request, session, machine, state=state, status_code=422)


@router.post("/admin/machines/{machine_id:int}/enabled", response_class=HTMLResponse)
async def machine_enable(
    request: Request,
    machine_id: Id,
    session: SessionDep,
    _admin: WebAdmin,
    _csrf: CsrfChecked,
    enabled: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Disable or enable a machine; a machine running a job is not disabled (admins)."""
    machine = await _get(session, machine_id)
    on = enabled == "true"
    running = _fleet(request).running_job(machine.id)
    if not on and running is not None:
        state = FormState(
            "enabled",
            general=[
                f"{machine.name} is running job {running}: cancel it or let it end, "
                "then disable the machine"
            ],
        )
        return await _machine_page(request, session, machine, state=state, status_code=409)
    await machine_service.update(
        session=session, machine=machine, machine_in=MachineUpdate(enabled=on)
    )
    await session.commit()
    await _announce(request, machine)
    return redirect(f"/admin/machines/{machine.id}?done={'enabled' if on else 'disabled'}")


@router.post("/admin/machines/{machine_id:int}/delete", response_class=HTMLResponse)
async def machine_delete(
    request: Request, machine_id: Id, session: SessionDep, _admin: WebAdmin, _csrf: CsrfChecked
) -> Response:
    """Delete a machine nothing refers to; one with jobs or usage is kept (admins)."""
    machine = await _get(session, machine_id)
    fleet = _fleet(request)
    running = fleet.running_job(machine.id)
    reason = None
    if running is not None:
        reason = f"{machine.name} is running job {running}: it cannot be deleted now"
    else:
        try:
            await machine_service.delete(session=session, machine=machine)
        except ConflictError as exc:
            reason = (
                exc.detail.replace(" (PATCH enabled=false)", "")
                + ": its records stay, so it cannot be deleted"
            )
            await session.rollback()  # a refused flush leaves the transaction unusable
            machine = await _get(session, machine_id)
    if reason is not None:
        state = FormState("delete", general=[reason])
        return await _machine_page(request, session, machine, state=state, status_code=409)
    await session.commit()
    try:
        await fleet.sync(None, machine_id)
    finally:  # open machine grids drop the card, its page says it is gone
        announce_machine(request, None, machine_id)
    for photo in _photos(request, machine_id):
        (_photo_dir(request) / photo).unlink(missing_ok=True)
    return redirect("/admin/machines?deleted=" + str(machine_id))


@router.post("/admin/machines/{machine_id:int}/test", response_class=HTMLResponse)
async def machine_test(
    request: Request, machine_id: Id, session: SessionDep, _admin: WebAdmin, _csrf: CsrfChecked
) -> HTMLResponse:
    """Test the saved connection: connect, report the firmware or the error, close (admins)."""
    machine = await _get(session, machine_id)
    await session.commit()  # the test may take seconds: hold no transaction meanwhile
    result = await request.app.state.probe(_fleet(request), machine)
    return await _machine_page(
        request,
        session,
        machine,
        notice=f"Connection test: {result.message}" if result.ok else None,
        state=None
        if result.ok
        else FormState("test", general=[f"Connection test failed: {result.message}"]),
    )


@router.post("/admin/machines/{machine_id:int}/slicer-profile", response_class=HTMLResponse)
async def machine_profile(
    request: Request,
    machine_id: Id,
    session: SessionDep,
    admin: WebAdmin,
    _csrf: CsrfChecked,
    profile: Annotated[str, Form(max_length=256 * 1024)] = "",
    action: Annotated[str, Form(max_length=10)] = "save",
) -> Response:
    """Save an edited PrusaSlicer profile, or go back to the generated one (admins)."""
    machine = await _get(session, machine_id)
    try:
        if action == "reset":
            await slicer_service.reset(session=session, machine=machine)
        else:
            if not profile.strip():
                raise_field("profile", "fill this in, or use the generated profile")
            await slicer_service.put(
                session=session, machine=machine, profile_text=profile, by=admin
            )
    except DomainError as exc:
        await session.rollback()
        machine = await _get(session, machine_id)
        state = FormState("profile", {"profile": profile})
        state.refuse(exc)
        if not state.errors:
            state.errors["profile"] = state.general.pop()
        return await _machine_page(request, session, machine, state=state, status_code=422)
    return redirect(
        f"/admin/machines/{machine.id}?done={'profile-reset' if action == 'reset' else 'profile'}"
    )


def raise_field(field: str, message: str) -> None:
    """Refuse one field of a form."""
    raise forms.FieldError(field, message)


@router.post("/admin/machines/{machine_id:int}/motion-limits", response_class=HTMLResponse)
async def machine_limits(
    request: Request, machine_id: Id, session: SessionDep, admin: WebAdmin, _csrf: CsrfChecked
) -> Response:
    """Override the motion limits the machine reported, or drop the override (admins)."""
    machine = await _get(session, machine_id)
    form = await request.form()
    typed = {k: str(v)[:40] for k, v in form.items() if isinstance(v, str) and k != "csrf_token"}
    caps = dict(machine.capabilities or {})
    if typed.get("action") == "clear":
        caps.pop("motion_limits", None)
        done = "limits-cleared"
    else:
        state = FormState("limits", typed)
        current = dict(caps.get("motion_limits") or {})
        limits = {k: v for k, v in current.items() if k not in ("source", "read_at", "set_by")}
        for key in AXIS_LIMITS:
            seq = list(current.get(key) or [None] * 4)[:4]
            seq += [None] * (4 - len(seq))
            for i, axis in enumerate(AXES):
                value = _positive(state, f"{key}_{axis}")
                seq[i] = value if value is not None else seq[i]
            if any(v is None for v in seq):
                if any(v is not None for v in seq):
                    state.errors.setdefault(f"{key}_x", "give all four axes, X, Y, Z and E")
                limits.pop(key, None)
            else:
                limits[key] = seq
        for key in SCALAR_LIMITS:
            value = _positive(state, key)
            if value is not None:
                limits[key] = value
            elif not typed.get(key, "").strip():
                limits.pop(key, None)
        if not state.refused:
            if machine.driver in ("grbl", "sim-grbl"):
                limits.setdefault("firmware", "grbl")
            limits.update(
                source="operator",
                read_at=utcnow().isoformat(timespec="seconds"),
                set_by=admin.username,
            )
            caps["motion_limits"] = limits
            try:
                Capabilities.model_validate(caps)
            except ValidationError as exc:
                state.general.extend(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        if state.refused:
            return await _machine_page(request, session, machine, state=state, status_code=422)
        done = "limits"
    await machine_service.update(
        session=session,
        machine=machine,
        machine_in=MachineUpdate(capabilities=Capabilities.model_validate(caps)),
    )
    return redirect(f"/admin/machines/{machine.id}?done={done}")


def _positive(state: FormState, field: str) -> float | None:
    value = _number(state, field)
    if value is not None and value <= 0:
        state.errors[field] = "must be more than 0"
        return None
    return value


@router.post("/admin/machines/{machine_id:int}/notes", response_class=HTMLResponse)
async def machine_notes(
    request: Request,
    machine_id: Id,
    session: SessionDep,
    _admin: WebAdmin,
    _csrf: CsrfChecked,
    notes: Annotated[str, Form(max_length=20_000)] = "",
) -> Response:
    """Save a machine's notes, shown on its card (admins)."""
    machine = await _get(session, machine_id)
    if len(notes) > 5000:
        state = FormState("notes", {"notes": notes}, {"notes": "write at most 5000 characters"})
        return await _machine_page(request, session, machine, state=state, status_code=422)
    await machine_service.update(
        session=session, machine=machine, machine_in=MachineUpdate(notes=notes.strip())
    )
    return redirect(f"/admin/machines/{machine.id}?done=notes")


@router.post("/admin/machines/{machine_id:int}/photos", response_class=HTMLResponse)
async def machine_photo_add(
    request: Request,
    machine_id: Id,
    session: SessionDep,
    _admin: WebAdmin,
    _csrf: CsrfChecked,
    # A text field named photo (a hand-made form) is refused in words, not by validation.
    photo: Annotated[UploadFile | str | None, File()] = None,
) -> Response:
    """Add a photo (JPEG, PNG or WebP), stored under a generated name (admins)."""
    machine = await _get(session, machine_id)
    limit = _photo_limit(request)
    message = None
    data = b""
    if not isinstance(photo, StarletteUpload) or not photo.filename:
        message = "choose a photo to upload"
    else:
        data = await photo.read(limit + 1)
        suffix = next((s for magic, s in PHOTO_TYPES.items() if data.startswith(magic)), None)
        if suffix == ".webp" and data[8:12] != b"WEBP":
            suffix = None
        if len(data) > limit:
            message = f"the photo is larger than {size_text(limit)}: make it smaller first"
        elif suffix is None:
            message = "this is not a JPEG, PNG or WebP picture"
        elif len(_photos(request, machine.id)) >= MAX_PHOTOS:
            message = f"a machine keeps at most {MAX_PHOTOS} photos: remove one first"
    if message is not None:
        state = FormState("photo", errors={"photo": message})
        code = 413 if len(data) > limit else 422
        return await _machine_page(request, session, machine, state=state, status_code=code)
    folder = _photo_dir(request)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{machine.id}-{uuid.uuid4().hex}{suffix}"
    (folder / name).write_bytes(data)
    return redirect(f"/admin/machines/{machine.id}?done=photo#photos")


@router.post("/admin/machines/{machine_id:int}/photos/{name}/remove")
async def machine_photo_remove(
    request: Request, machine_id: Id, name: str, _admin: WebAdmin, _csrf: CsrfChecked
) -> Response:
    """Remove a photo of a machine (admins)."""
    match = PHOTO_NAME.match(name)
    if match is None or int(match.group(1)) != machine_id:
        raise NotFoundError("no such photo")
    (_photo_dir(request) / name).unlink(missing_ok=True)
    return redirect(f"/admin/machines/{machine_id}?done=photo-removed#photos")


@router.get("/machine-photos/{name}")
async def machine_photo(request: Request, name: str, _user: WebMember) -> Response:
    """Serve a machine's photo (members)."""
    path = _photo_dir(request) / name
    if PHOTO_NAME.match(name) is None or not path.is_file():
        raise NotFoundError("no such photo")
    return FileResponse(
        path,
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
    )


__all__ = ["card_photos", "router"]
