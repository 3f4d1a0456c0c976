"""0006b moves a machine's power rating from its booking profile onto the machine, both ways."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from microfactory import migrate
from microfactory.config import Settings


def test_the_rating_survives_upgrade_and_downgrade(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'm.sqlite3'}")
    migrate.upgrade(settings, "0006")
    engine = create_engine(settings.sync_database_url)
    with engine.begin() as conn:
        for mid, name in ((1, "rated"), (2, "unrated")):
            conn.execute(
                text(
                    "INSERT INTO machines (id, name, kind, driver, connection, capabilities, "
                    "enabled, maintenance, notes, created_at, updated_at) VALUES (:id, :n, "
                    "'fdm_printer', 'manual', '{}', '{}', 1, 0, '', '2026-12-01', '2026-12-01')"
                ),
                {"id": mid, "n": name},
            )
        conn.execute(
            text(
                "INSERT INTO machine_profiles (machine_id, slot_minutes, buffer_minutes, "
                "requires_training, power_w) VALUES (1, 15, 0, 0, 150.0)"
            )
        )
    migrate.upgrade(settings, "0006b")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, power_w FROM machines ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, 150.0), (2, None)]
    migrate.downgrade(settings, "0006")
    with engine.connect() as conn:
        back = conn.execute(text("SELECT machine_id, power_w FROM machine_profiles")).all()
    engine.dispose()
    assert [tuple(r) for r in back] == [(1, 150.0)]


async def test_the_rating_is_the_machines_and_the_booking_profile_shows_it(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    made = await client.post(
        "/api/v1/machines",
        json={"name": "Laser", "kind": "laser_cutter", "driver": "manual", "power_w": 300},
        headers=operator,
    )
    assert made.status_code == 201, made.text
    machine = made.json()
    assert machine["power_w"] == 300
    profile = f"/api/v1/machines/{machine['id']}/booking-profile"
    assert (await client.get(profile, headers=operator)).json()["power_w"] == 300
    changed = await client.patch(profile, json={"power_w": 250}, headers=operator)
    assert changed.status_code == 200, changed.text
    assert changed.json()["power_w"] == 250
    got = await client.get(f"/api/v1/machines/{machine['id']}", headers=operator)
    assert got.json()["power_w"] == 250
    cleared = await client.patch(
        f"/api/v1/machines/{machine['id']}", json={"power_w": None}, headers=operator
    )
    assert cleared.json()["power_w"] is None
