"""PostgreSQL restarts while a job streams: the job goes on and no row is lost.

The test starts a throwaway cluster of its own (port 55440 by default, a folder under /tmp),
so the servers other tests share are never restarted, and stops and deletes it at the end.
While the database is down the supervisor's progress writes are skipped (the next one
supersedes them) and its state transitions wait for the database to come back.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select, text

from microfactory import migrate
from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role, TokenKind
from microfactory.accounts.schemas import UserCreate
from microfactory.app import create_app
from microfactory.config import Settings
from microfactory.jobs.models import Job, JobEvent
from microfactory.usage.models import UsageRecord
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(240)]

PORT = int(os.environ.get("MICROFACTORY_TEST_FAULT_PGPORT", "55440"))


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    return found[-1] if found and (found[-1] / "pg_ctl").exists() else None


class Cluster:
    """A PostgreSQL cluster the test owns: initdb, start, restart, stop."""

    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin = bin_dir
        self.dir = root / "pg"
        self.port = port
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self.dir.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir.parent, "postgres", "postgres")
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.dir), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.dir), "-l", str(self.dir / "server.log"), "-w", "-t", "60",
            "start", "-o", options,
        )  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir), "-m", "fast", "-w", "stop")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
    root = Path(tempfile.mkdtemp(prefix="microfactory-fault-pg-"))
    pg = Cluster(bin_dir, root, PORT)
    try:
        pg.init()
        pg.start()
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot start a PostgreSQL cluster on port {PORT}: {exc.stderr!r}")
    try:
        yield pg
    finally:
        try:
            pg.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_settings(cluster: Cluster, tmp_path: Path) -> Settings:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=cluster.url,
        log_json=False,
        run_supervisors=True,
        auto_dispatch=False,
    )
    migrate.upgrade(settings)
    return settings


@pytest.fixture
async def pg_app(pg_settings: Settings) -> Any:
    app = create_app(pg_settings)
    async with app.router.lifespan_context(app):
        yield app


async def _operator(app: Any) -> dict[str, str]:
    async with app.state.sessionmaker() as session:
        user = await account_service.create(
            session=session,
            user_in=UserCreate(username="olga", password="olga-pass-12", role=Role.OPERATOR),
        )
        token, _ = await account_service.issue_token(
            session=session, user=user, kind=TokenKind.PERSONAL
        )
        await session.commit()
    return {"Authorization": f"Bearer {token}"}


PROGRAM = b"G21\nG90\nG1 F600\n" + b"".join(
    f"G1 X{(i % 2) * 5} Y{i % 5}\n".encode() for i in range(60)
)


async def test_a_job_streams_on_across_a_postgresql_restart(
    cluster: Cluster, pg_app: Any, pg_settings: Settings
) -> None:
    operator = await _operator(pg_app)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=pg_app), base_url="http://t")
    async with client:
        machine = (
            await client.post(
                "/api/v1/machines",
                json={
                    "name": "Mill",
                    "kind": "cnc_mill",
                    "driver": "sim-grbl",
                    "connection": {"speed_factor": 5},
                },
                headers=operator,
            )
        ).json()

        async def idle() -> bool:
            resp = await client.get(f"/api/v1/machines/{machine['id']}", headers=operator)
            return bool(resp.json()["status"]["state"] == "idle")

        await wait_for(idle, within=60, what="the simulated mill connects")
        job = (
            await client.post(
                "/api/v1/jobs",
                files={"file": ("long.nc", PROGRAM, "text/plain")},
                data={"machine_id": str(machine["id"])},
                headers=operator,
            )
        ).json()
        resp = await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=operator)
        assert resp.status_code == 200, resp.text

        async def acked() -> bool:
            resp = await client.get(f"/api/v1/jobs/{job['id']}", headers=operator)
            return bool((resp.json()["last_acked_line"] or 0) > 3)

        await wait_for(acked, within=60, what="the first progress write")

    # The database goes away mid-job (its connections are cut) and comes back.
    await asyncio.to_thread(cluster.stop)
    fleet = pg_app.state.fleet
    supervisor = fleet.supervisors[machine["id"]]
    await asyncio.sleep(3)  # progress writes fail meanwhile; the machine streams on
    assert supervisor.job_id == job["id"]
    await asyncio.to_thread(cluster.start)

    def ended() -> dict[str, Any] | None:
        engine = create_engine(pg_settings.sync_database_url)
        try:
            with engine.connect() as conn:
                row = conn.execute(
                    text("SELECT state, failure_reason, last_acked_line, lines_total "
                         "FROM jobs WHERE id = :id"), {"id": job["id"]},
                ).one()  # fmt: skip
        finally:
            engine.dispose()
        return dict(row._mapping) if row.state in ("finished", "failed") else None

    done = await wait_for(lambda: asyncio.to_thread(ended), within=120, what="the job ends")
    assert done["state"] == "finished", done["failure_reason"]
    assert done["last_acked_line"] == done["lines_total"]

    await pg_app.state.events.drain()
    async with pg_app.state.sessionmaker() as session:
        events = list(
            (
                await session.execute(
                    select(JobEvent.to_state)
                    .where(JobEvent.job_id == job["id"])
                    .order_by(JobEvent.id)
                )
            ).scalars()
        )
        usage = list((await session.execute(select(UsageRecord))).scalars())
        stored = await session.get(Job, job["id"])
    assert [e.value for e in events][-2:] == ["running", "finished"]
    assert [(u.job_id, u.outcome) for u in usage] == [(job["id"], "finished")]
    assert stored is not None
    assert stored.progress["lines_acked"] == stored.lines_total
