"""Machine registry rules."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.db import Base
from microfactory.errors import ConflictError, InvalidInputError, NotFoundError
from microfactory.machines.models import Machine, MachineKind
from microfactory.machines.schemas import (
    Capabilities,
    MachineCreate,
    MachineRead,
    MachineUpdate,
    masked_connection,
    validate_connection,
)


def offline_status(machine: Machine) -> dict[str, Any]:
    """Return the status of a machine no supervisor reports on."""
    if machine.driver == "manual":
        return {"state": "idle", "message": "manual machine"}
    if not machine.enabled:
        return {"state": "offline", "message": "disabled"}
    return {"state": "offline", "message": "not connected"}


async def get_or_raise(*, session: AsyncSession, machine_id: int) -> Machine:
    """Return a machine by id or raise NotFoundError."""
    machine = await session.get(Machine, machine_id)
    if machine is None:
        raise NotFoundError(f"machine {machine_id} not found")
    return machine


async def list_machines(*, session: AsyncSession) -> list[Machine]:
    """Return every machine, by name."""
    result = await session.execute(select(Machine).order_by(Machine.name))
    return list(result.scalars())


async def _name_taken(session: AsyncSession, name: str, exclude_id: int | None = None) -> bool:
    stmt = select(Machine.id).where(Machine.name == name)
    if exclude_id is not None:
        stmt = stmt.where(Machine.id != exclude_id)
    return (await session.execute(stmt)).first() is not None


def _apply_volume(machine: Machine, volume: Any) -> None:
    machine.build_volume_x_mm = volume.x if volume else None
    machine.build_volume_y_mm = volume.y if volume else None
    machine.build_volume_z_mm = volume.z if volume else None


async def create(*, session: AsyncSession, machine_in: MachineCreate) -> Machine:
    """Register a machine; names are unique."""
    if await _name_taken(session, machine_in.name):
        raise ConflictError(f"a machine named {machine_in.name!r} already exists")
    machine = Machine(
        name=machine_in.name,
        kind=machine_in.kind,
        driver=machine_in.driver,
        connection=machine_in.connection,
        capabilities=machine_in.capabilities.model_dump(mode="json"),
        enabled=machine_in.enabled,
        maintenance=machine_in.maintenance,
        notes=machine_in.notes,
        power_w=machine_in.power_w,
    )
    _apply_volume(machine, machine_in.build_volume_mm)
    session.add(machine)
    try:
        await session.flush()
    except IntegrityError:
        raise ConflictError(f"a machine named {machine_in.name!r} already exists") from None
    return machine


async def update(*, session: AsyncSession, machine: Machine, machine_in: MachineUpdate) -> Machine:
    """Change a machine; connection settings are validated against the (new) driver."""
    data = machine_in.model_dump(exclude_unset=True)
    if "name" in data and data["name"] != machine.name:
        if await _name_taken(session, data["name"], exclude_id=machine.id):
            raise ConflictError(f"a machine named {data['name']!r} already exists")
        machine.name = data["name"]
    driver = data.get("driver") or machine.driver
    if "connection" in data or driver != machine.driver:
        connection = dict(data.get("connection") or {})
        if "connection" not in data:
            raise InvalidInputError("changing the driver needs new connection settings")
        # A masked secret (an API key, a URL's password) sent back as shown keeps the stored
        # value.
        stored = machine.connection or {}
        for key, shown in masked_connection(stored).items():
            if (
                shown != stored.get(key)
                and key in connection
                and connection[key] == shown
                and driver == machine.driver
            ):
                connection[key] = stored[key]
        try:
            machine.connection = validate_connection(driver, connection)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        machine.driver = driver
    if "kind" in data:
        machine.kind = data["kind"]
    if "build_volume_mm" in data:
        _apply_volume(machine, machine_in.build_volume_mm)
    if "capabilities" in data and machine_in.capabilities is not None:
        machine.capabilities = machine_in.capabilities.model_dump(mode="json")
    for key in ("enabled", "maintenance", "notes"):
        if key in data and data[key] is not None:
            setattr(machine, key, data[key])
    if "power_w" in data:
        machine.power_w = data["power_w"]
    await session.flush()
    return machine


async def _referenced_by(session: AsyncSession, machine: Machine) -> list[str]:
    """Name the tables whose rows keep this machine (a foreign key that does not cascade)."""
    found = []
    for table in Base.metadata.sorted_tables:
        for fk in table.foreign_keys:
            if fk.column.table.name != Machine.__tablename__ or fk.ondelete in ("CASCADE",):
                continue
            stmt = select(fk.parent).where(fk.parent == machine.id).limit(1)
            if (await session.execute(stmt)).first() is not None:
                found.append(table.name)
    return sorted(set(found))


async def delete(*, session: AsyncSession, machine: Machine) -> None:
    """Remove a machine from the registry, unless jobs or usage records refer to it."""
    # Checked first: a failed flush would leave the request's transaction unusable.
    if referenced := await _referenced_by(session, machine):
        raise ConflictError(
            f"machine {machine.name!r} has {' and '.join(referenced)} on record; "
            "disable it instead (PATCH enabled=false)"
        )
    await session.delete(machine)
    try:
        await session.flush()
    except IntegrityError:
        raise ConflictError(
            f"machine {machine.name!r} has jobs or usage on record; disable it instead"
        ) from None


def to_read(machine: Machine, status: dict[str, Any]) -> MachineRead:
    """Build the API view of a machine: secrets masked, with its live status."""
    volume = None
    if machine.build_volume_x_mm and machine.build_volume_y_mm and machine.build_volume_z_mm:
        volume = {
            "x": machine.build_volume_x_mm,
            "y": machine.build_volume_y_mm,
            "z": machine.build_volume_z_mm,
        }
    return MachineRead.model_validate(
        {
            "id": machine.id,
            "name": machine.name,
            "kind": machine.kind,
            "driver": machine.driver,
            "connection": masked_connection(machine.connection or {}),
            "build_volume_mm": volume,
            "capabilities": Capabilities.model_validate(machine.capabilities or {}),
            "enabled": machine.enabled,
            "maintenance": machine.maintenance,
            "notes": machine.notes,
            "power_w": machine.power_w,
            "status": status,
            "created_at": machine.created_at,
            "updated_at": machine.updated_at,
        }
    )


# -- operator controls: jog, home, preheat -----------------------------------------------

GRBL_DRIVERS = frozenset({"grbl", "sim-grbl"})
#: preheat presets for printers: (hotend °C, bed °C); "off" switches both heaters off
PREHEAT_PRESETS: dict[str, tuple[int, int]] = {
    "pla": (200, 60),
    "petg": (235, 80),
    "abs": (245, 100),
    "off": (0, 0),
}
JOG_AXES = ("x", "y", "z")
MAX_JOG_MM = 100.0


def jog_lines(machine: Machine, moves: dict[str, float], feed_mm_min: float) -> list[str]:
    """Return the lines that move the tool by `moves` (mm, relative) at `feed_mm_min`.

    GRBL jogs with `$J=` (a jog is cancellable and never changes the parser's modes); Marlin
    moves relatively (G91), then goes back to absolute (G90) and reports the position (M114).
    """
    axes = {a: float(moves[a]) for a in JOG_AXES if moves.get(a)}
    if not axes:
        raise InvalidInputError("a jog needs a distance on x, y or z")
    for axis, mm in axes.items():
        if abs(mm) > MAX_JOG_MM:
            raise InvalidInputError(f"{axis}: a jog moves at most {MAX_JOG_MM:g} mm at a time")
    words = " ".join(f"{a.upper()}{mm:g}" for a, mm in axes.items())
    feed = f"F{feed_mm_min:g}"
    if machine.driver in GRBL_DRIVERS:
        return [f"$J=G91 G21 {words} {feed}"]
    if machine.driver == "manual":
        raise ConflictError(f"machine {machine.name!r} is manual: it takes no commands")
    lines = ["G91", f"G0 {words} {feed}", "G90"]
    if machine.driver != "octoprint":
        lines.append("M114")  # OctoPrint relays no replies
    return lines


def home_lines(machine: Machine, axes: list[str] | None = None) -> list[str]:
    """Return the lines that home the machine (G28, or GRBL's homing cycle `$H`)."""
    if machine.driver == "manual":
        raise ConflictError(f"machine {machine.name!r} is manual: it takes no commands")
    if machine.driver in GRBL_DRIVERS:
        if axes:
            raise InvalidInputError("GRBL homes all axes together ($H)")
        return ["$H"]
    words = " ".join(a.upper() for a in axes or [] if a in JOG_AXES)
    lines = [f"G28 {words}".strip()]
    if machine.driver != "octoprint":
        lines.append("M114")
    return lines


def preheat_lines(machine: Machine, preset: str) -> list[str]:
    """Return the lines that set a printer's heaters to a preset (M104 and M140, no wait)."""
    if machine.kind is not MachineKind.FDM_PRINTER or machine.driver in GRBL_DRIVERS:
        raise ConflictError(f"machine {machine.name!r} is not a 3D printer: it has no heaters")
    if machine.driver == "manual":
        raise ConflictError(f"machine {machine.name!r} is manual: it takes no commands")
    temps = PREHEAT_PRESETS.get(preset.lower())
    if temps is None:
        raise InvalidInputError(
            f"unknown preset {preset!r}; choose one of {', '.join(PREHEAT_PRESETS)}"
        )
    hotend, bed = temps
    return [f"M104 S{hotend}", f"M140 S{bed}"]


def refuse_while_running(machine: Machine, running_job: int | None, action: str) -> None:
    """Refuse a control that moves or heats while a job runs on the machine."""
    if running_job is not None:
        raise ConflictError(
            f"machine {machine.name!r} is running job {running_job}: {action} is refused "
            "while a job runs (pause is not enough: cancel the job first)"
        )


def raise_if_refused(machine: Machine, results: list[dict[str, Any]]) -> None:
    """Turn a line the machine refused into a 409 that names it and why."""
    for result in results:
        if not result.get("ok", True):
            raise ConflictError(
                f"machine {machine.name!r} refused `{result.get('line')}`: "
                f"{result.get('error') or 'no reason given'}"
            )
        reply = result.get("reply") or []
        if reply and str(reply[-1]).startswith("error:"):
            raise ConflictError(
                f"machine {machine.name!r} refused `{result.get('line')}`: {reply[-1]}"
            )


# -- webcam -------------------------------------------------------------------------------


async def set_webcam(
    *, session: AsyncSession, machine: Machine, stream_url: str | None, snapshot_url: str | None
) -> Machine:
    """Store where a machine's webcam is (both empty: no webcam)."""
    urls = {"stream_url": stream_url, "snapshot_url": snapshot_url}
    machine.webcam = {k: v for k, v in urls.items() if v} or None
    await session.flush()
    return machine


def webcam_url(machine: Machine, kind: str) -> str:
    """Return the camera URL to proxy ("stream" or "snapshot"), or raise NotFoundError."""
    urls = machine.webcam or {}
    url = urls.get(f"{kind}_url")
    if not url:
        if urls:
            other = "snapshot" if kind == "stream" else "stream"
            raise NotFoundError(f"machine {machine.name!r} has a webcam {other} URL, no {kind}")
        raise NotFoundError(f"machine {machine.name!r} has no webcam")
    return str(url)
