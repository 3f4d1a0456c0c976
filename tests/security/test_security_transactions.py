"""No database transaction stays open while an upload is stored or analysed.

From the issue: a 200 MiB upload held the SQLite write lock for its whole analysis, so
logins waited 15 s and the scheduler failed with `database is locked`. The test looks at
the database from outside, at the moments the upload's file I/O and its analysis run: on
SQLite another connection must take the write lock at once (`BEGIN IMMEDIATE`, no wait);
on PostgreSQL no connection of the app may sit "idle in transaction".
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from microfactory.config import Settings
from microfactory.jobs import routes as job_routes
from microfactory.jobs import service as job_service

PRINT = b"G28\nG1 Z0.2 F3000\nM104 S200\n" + b"G1 X10 Y10 E1 F1200\nG1 X20 Y10 E2\n" * 200


def _open_transactions(settings: Settings) -> list[str]:
    """Return what holds a transaction open in the database, as seen from outside."""
    url = settings.sync_database_url
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()
        except sqlite3.OperationalError as exc:
            return [str(exc)]
        finally:
            conn.close()
        return []
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
                )
            ).all()
    finally:
        engine.dispose()
    return [str(r[0]) for r in rows]


async def test_upload_storage_and_analysis_run_outside_any_transaction(
    client: httpx.AsyncClient,
    app: Any,
    settings: Settings,
    operator: dict[str, str],
    member: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created = await client.post(
        "/api/v1/machines",
        json={
            "name": "Printer",
            "kind": "fdm_printer",
            "driver": "marlin",
            "connection": {"port": "/dev/ttyACM0"},
        },
        headers=operator,
    )
    assert created.status_code == 201, created.text
    seen: dict[str, list[str]] = {}
    real_store, real_analyse = job_routes.store_upload, job_service.analyse_file

    async def store(*args: Any, **kwargs: Any) -> Any:
        seen["storing"] = _open_transactions(settings)
        return await real_store(*args, **kwargs)

    async def analyse(path: Path, **kwargs: Any) -> Any:
        seen["analysing"] = _open_transactions(settings)
        return await real_analyse(path, **kwargs)

    monkeypatch.setattr(job_routes, "store_upload", store)
    monkeypatch.setattr(job_service, "analyse_file", analyse)
    resp = await client.post(
        "/api/v1/jobs",
        files={"file": ("part.gcode", PRINT, "text/plain")},
        data={"machine_id": str(created.json()["id"])},
        headers=member,
    )
    assert resp.status_code == 201, resp.text
    assert seen == {"storing": [], "analysing": []}
