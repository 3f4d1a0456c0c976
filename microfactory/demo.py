"""The demo shop: simulated printers and a simulated CNC, and one user of each role."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory import resources
from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role
from microfactory.accounts.schemas import UserCreate
from microfactory.bookings import demo as booking_demo
from microfactory.config import Environment, Settings
from microfactory.costs import demo as cost_demo
from microfactory.machines import service as machine_service
from microfactory.machines.models import Machine
from microfactory.machines.schemas import MachineCreate


@dataclass(frozen=True)
class DemoLogin:
    """A demo user's login, printed at startup."""

    username: str
    password: str
    role: Role


# Fixed passwords are acceptable only because the demo refuses to run in production.
DEMO_USERS = (
    DemoLogin("member", "member-demo-pass", Role.MEMBER),
    DemoLogin("operator", "operator-demo-pass", Role.OPERATOR),
    DemoLogin("admin", "admin-demo-pass", Role.ADMIN),
)

_FDM_CAPS = {
    "nozzle_diameter_mm": 0.4,
    "materials": ["PLA", "PETG"],
    "loaded_material": "PLA",
    "max_hotend_c": 280,
    "max_bed_c": 110,
    "tags": [],
}


def demo_machines(speed_factor: float, baud: int = 115200) -> list[MachineCreate]:
    """Return the demo shop's machines (their simulators' link at `baud`, 0: unmetered)."""
    sim: dict[str, float | int] = {"speed_factor": speed_factor, "baud": baud}
    return [
        MachineCreate.model_validate(m)
        for m in [
            {
                "name": "Prusa MK3S #1",
                "kind": "fdm_printer",
                "driver": "sim-marlin",
                "connection": sim,
                "build_volume_mm": {"x": 220, "y": 220, "z": 250},
                "capabilities": {**_FDM_CAPS, "tags": ["enclosure"]},
                "notes": "Simulated Marlin printer on a pty.",
            },
            {
                "name": "Prusa MK3S #2",
                "kind": "fdm_printer",
                "driver": "sim-marlin",
                "connection": sim,
                "build_volume_mm": {"x": 220, "y": 220, "z": 250},
                "capabilities": _FDM_CAPS,
                "notes": "Simulated Marlin printer on a pty.",
            },
            {
                "name": "Ender 3 (manual)",
                "kind": "fdm_printer",
                "driver": "manual",
                "build_volume_mm": {"x": 220, "y": 220, "z": 250},
                "capabilities": {**_FDM_CAPS, "materials": ["PLA"]},
                "notes": "Print from an SD card; book it and log your use.",
            },
            {
                "name": "Shapeoko CNC",
                "kind": "cnc_mill",
                "driver": "sim-grbl",
                "connection": sim,
                "build_volume_mm": {"x": 400, "y": 400, "z": 75},
                "capabilities": {
                    "spindle_max_rpm": 24000,
                    "materials": ["plywood", "MDF", "aluminium"],
                },
                "notes": "Simulated GRBL 1.1 mill on a pty.",
            },
            {
                "name": "Laser cutter 40W",
                "kind": "laser_cutter",
                "driver": "manual",
                "build_volume_mm": {"x": 300, "y": 200, "z": 20},
                "capabilities": {"laser_power_w": 40, "materials": ["plywood-3mm", "acrylic-3mm"]},
                "notes": "Manual laser: training required.",
            },
        ]
    ]


DEMO_DESIGNS = resources.demo_data_dir()


async def seed_designs(*, session: AsyncSession, settings: Settings) -> None:
    """Import the sample designs of the commons (the parametric L-bracket) if none exist."""
    from fastapi import UploadFile

    from microfactory.designs import service as design_service
    from microfactory.designs.models import Design
    from microfactory.designs.storage import store_uploads

    if (await session.execute(select(Design.id).limit(1))).first() is not None:
        return
    for folder in sorted(p for p in DEMO_DESIGNS.iterdir() if p.is_dir()):
        handles = [path.open("rb") for path in sorted(folder.iterdir()) if path.is_file()]
        try:
            uploads = [UploadFile(file=fh, filename=Path(fh.name).name) for fh in handles]
            stored = await store_uploads(
                uploads, settings.upload_dir, settings.max_upload_bytes, allow_zip=True
            )
            await design_service.import_okh(
                session=session, owner=None, uploads=stored, settings=settings
            )
        finally:
            for fh in handles:
                fh.close()


async def seed(*, session: AsyncSession, settings: Settings) -> list[DemoLogin]:
    """Seed the demo shop if the database is empty; return the demo logins."""
    if settings.environment is Environment.PRODUCTION:
        raise RuntimeError("the demo shop cannot be seeded in production")
    if await account_service.count_users(session=session) == 0:
        for login in DEMO_USERS:
            await account_service.create(
                session=session,
                user_in=UserCreate(
                    username=login.username,
                    password=login.password,
                    role=login.role,
                    full_name=f"Demo {login.role.value}",
                    # The demo member is trusted, so their jobs start without approval.
                    trusted=login.role is Role.MEMBER,
                ),
            )
    has_machines = (await session.execute(select(Machine.id).limit(1))).first() is not None
    if not has_machines:
        for machine_in in demo_machines(settings.demo_speed_factor, settings.demo_baud):
            await machine_service.create(session=session, machine_in=machine_in)
    await seed_designs(session=session, settings=settings)
    await booking_demo.seed(session=session)  # opening hours, machine profiles
    await cost_demo.seed(session=session)  # rates and a plan
    return list(DEMO_USERS)


def print_logins(logins: list[DemoLogin], host: str, port: int) -> None:
    """Print the demo logins for the newcomer."""
    print("\nmicrofactory demo shop")
    print(f"  open http://{host}:{port}/ and log in as:")
    for login in logins:
        print(
            f"    {login.role.value:9s} username {login.username!r:12s} password {login.password!r}"
        )
    print(flush=True)
