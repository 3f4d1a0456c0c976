"""Shared fixtures: settings per database backend, a migrated database, the app, clients.

API and service tests take the `settings` fixture, which is parametrised over SQLite and
PostgreSQL, so the same suite runs on both. The PostgreSQL server is the throwaway cluster
the test command starts (scripts/pg.sh); its URL arrives in MICROFACTORY_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from microfactory import migrate
from microfactory.accounts import security
from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role, TokenKind, User
from microfactory.accounts.schemas import UserCreate
from microfactory.app import create_app
from microfactory.config import Settings
from microfactory.models import Base

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("MICROFACTORY_TEST_POSTGRES_URL")


def shared_data_dir() -> Path:
    """Return the committed sample data (tests/data; see its README)."""
    from tests.samples import DATA

    return DATA


def require_or_skip(available: bool, reason: str) -> None:
    """Skip when a real peer is missing, but fail in CI where it must be there."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing peer is a failure, not a skip)")
    pytest.skip(reason)


# Seconds per test file, for handing the longest out first: the test command spreads files
# over two workers (pytest-xdist, `--dist loadfile`), and a long file started last keeps
# one worker busy while the other sits idle. Measured one file at a time (`-n 0`) on the
# shared 2-core machine at load 6-10 (2026-12-02; files this branch made faster scaled by
# their before/after ratio at load 2.5-5), so only the proportions matter; files not
# listed count UNLISTED_SECONDS_PER_TEST per test.
FILE_SECONDS: dict[str, float] = {
    "tests/fuzz/test_schemathesis.py": 258,
    "tests/runtime/test_multiprocess.py": 178,
    "tests/browser/test_design_flow.py": 45,  # 132 at 115200 baud; 64 s -> 21 s locally
    "tests/api/test_bad_input.py": 131,
    "tests/network/test_network_loopback.py": 114,
    "tests/test_cli.py": 98,
    "tests/test_packaging.py": 95,
    "tests/unit/analysis/test_analysis_memory.py": 64,
    "tests/security/test_fault_crash_heaters.py": 61,
    "tests/integration/test_pipeline.py": 60,
    "tests/drivers/marlin/test_marlin_virtual_printer.py": 53,
    "tests/api/test_jobs.py": 48,
    "tests/integration/test_octoprint_jobs.py": 48,
    "tests/api/test_machines.py": 45,
    "tests/api/test_auth.py": 44,
    "tests/drivers/marlin/test_marlin_sim.py": 41,
    "tests/integration/test_queue_bookings.py": 38,
    "tests/integration/test_lifecycle_runs.py": 36,
    "tests/integration/test_supervised_jobs.py": 35,
    "tests/network/hub/test_mirror.py": 34,
    "tests/integration/test_fault_postgres_restart.py": 34,
    "tests/integration/test_unknown_commands.py": 29,
    "tests/integration/test_fault_octoprint_restart.py": 27,
    "tests/browser/test_dashboard.py": 27,
    "tests/drivers/octoprint/test_octoprint_server.py": 27,
    "tests/network/requests/test_requests_loopback.py": 21,
    "tests/security/test_security_orphans.py": 19,
    "tests/browser/test_bookings.py": 17,
    "tests/integration/test_motion_limits.py": 16,
    "tests/designs/test_import_remote.py": 9,
    # Estimated from single-file runs on a loaded machine (2026-12-02): correct from CI.
    "tests/browser/test_network_requests.py": 40,
    "tests/integration/test_moonraker_jobs.py": 45,
    "tests/integration/test_prusalink_jobs.py": 40,
    "tests/browser/test_live_pages.py": 30,
    "tests/browser/test_admin.py": 30,
    "tests/browser/test_crawl.py": 30,
    "tests/browser/test_machine_cards.py": 25,
    "tests/browser/test_moonraker_grid.py": 25,
    "tests/drivers/moonraker/test_moonraker_server.py": 25,
    "tests/browser/test_job_preview.py": 20,
    "tests/browser/test_prusalink_grid.py": 18,
    "tests/browser/test_machine_page.py": 18,
    "tests/browser/test_calendar.py": 15,
    "tests/drivers/prusalink/test_prusalink_server.py": 15,
}
UNLISTED_SECONDS_PER_TEST = 1.0
LONGEST_FILES = tuple(sorted(FILE_SECONDS, key=lambda name: -FILE_SECONDS[name]))


def estimated_seconds(name: str, tests: int) -> float:
    """How long a test file takes, as far as we know (for scheduling only)."""
    return FILE_SECONDS.get(name, tests * UNLISTED_SECONDS_PER_TEST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the longest files first; every file keeps its own order."""
    rank = {name: index for index, name in enumerate(LONGEST_FILES)}
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(str(item.path), index)

    def key(item: pytest.Item) -> tuple[int, int]:
        name = item.path.relative_to(REPO).as_posix()
        return (rank.get(name, len(rank)), first_seen[str(item.path)])

    items.sort(key=key)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, handing out the longest files first (see LongestFileFirst)."""
    if config.getvalue("dist") != "loadfile":
        return None
    return _longest_file_first_scheduler(config, log)


def _longest_file_first_scheduler(config: pytest.Config, log: Any) -> Any:
    """Build the scheduler (xdist is imported only when tests run on workers)."""
    from xdist.scheduler import LoadFileScheduling

    class LongestFileFirst(LoadFileScheduling):  # type: ignore[misc]
        """xdist's loadfile, with the files handed out longest first, and only when needed.

        xdist's own loadfile queues the files by their number of tests (its
        --loadscope-reorder default; the collection order is lost), and gives a worker its
        next file while two of its tests are still to run, so a worker busy with a long
        file could be handed another. Here the next file is the longest left (FILE_SECONDS,
        or its number of tests for a file not listed), given when the worker is down to its
        last test: a worker must know its next test before it runs one, so that is as late
        as it can be.
        """

        def _assign_work_unit(self, node: Any) -> None:
            scope = max(self.workqueue, key=lambda s: estimated_seconds(s, len(self.workqueue[s])))
            work_unit = self.workqueue.pop(scope)
            self.assigned_work.setdefault(node, {})[scope] = work_unit
            collection = self.registered_collections[node]
            node.send_runtest_some(
                [collection.index(nodeid) for nodeid, done in work_unit.items() if not done]
            )

        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return LongestFileFirst(config, log)


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Name long byte strings by their length: test workers must agree on every test's name,
    and generated bytes (zips with timestamps) differ between two collections."""
    if isinstance(val, bytes | bytearray) and len(val) > 32:
        return f"{argname}-{len(val)}-bytes"
    return None


# -- databases -----------------------------------------------------------------------


def _make_pg_database(base_url: str) -> str:
    name = f"mf_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return base_url.rsplit("/", 1)[0] + "/" + name


def _drop_pg_database(base_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    engine = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite database for the session."""
    data_dir = tmp_path_factory.mktemp("sqlite")
    url = f"sqlite:///{data_dir / 'test.sqlite3'}"
    migrate.upgrade(Settings(data_dir=data_dir, database_url=url))
    return url


@pytest.fixture(scope="session")
def postgresql_database() -> Iterator[str]:
    """A migrated PostgreSQL database for the session, dropped at the end."""
    require_or_skip(bool(PG_URL), "PostgreSQL is not running (MICROFACTORY_TEST_POSTGRES_URL)")
    assert PG_URL
    url = _make_pg_database(PG_URL)
    migrate.upgrade(Settings(database_url=url))
    yield url
    engine = _ENGINES.pop(url, None)
    if engine is not None:
        engine.dispose()
    _drop_pg_database(PG_URL, url)


_ENGINES: dict[str, Engine] = {}

# The sequences owned by a table's column that have handed out a value (an insert, even a
# rolled-back one, advances them), with their tables.
_USED_SEQUENCES = text(
    "SELECT q.schemaname, q.sequencename, t.relname FROM pg_sequences q"
    " JOIN pg_class s ON s.relname = q.sequencename"
    " JOIN pg_namespace n ON n.oid = s.relnamespace AND n.nspname = q.schemaname"
    " JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i')"
    " JOIN pg_class t ON t.oid = d.refobjid"
    " WHERE q.last_value IS NOT NULL AND q.schemaname = current_schema()"
)


def _engine(url: str) -> Engine:
    """One engine per test database (a new engine per test costs a connection setup)."""
    engine = _ENGINES.get(url)
    if engine is None:
        engine = create_engine(url, pool_size=1, max_overflow=2, pool_pre_ping=True)
        _ENGINES[url] = engine
    return engine


def _truncate(url: str) -> None:
    """Empty every table and restart every identity (as TRUNCATE ... RESTART IDENTITY would).

    Only what a test wrote is reset: the tables with rows are emptied with DELETE (children
    first) and the table-owned sequences that moved are restarted. On PostgreSQL a TRUNCATE
    of the ~50 tables costs ~0.1 s per test (a new file per table and index), this ~0.01 s.
    """
    engine = _engine(url)
    postgres = url.startswith("postgresql")
    with engine.connect() as conn:
        existing = set(inspect(conn).get_table_names())
        tables = [t.name for t in reversed(Base.metadata.sorted_tables) if t.name in existing]
        if not tables:
            return
        probe = " UNION ALL ".join(
            f"SELECT '{name}' WHERE EXISTS (SELECT 1 FROM {name})"  # noqa: S608 (our metadata)
            for name in tables
        )
        with_rows = set(conn.execute(text(probe)).scalars())
        sequences = []
        if postgres:
            sequences = [
                f'"{schema}"."{name}"'
                for schema, name, table in conn.execute(_USED_SEQUENCES)
                if table in set(tables)
            ]
        conn.rollback()
    if not with_rows and not sequences:
        return
    try:
        with engine.begin() as conn:
            for name in tables:
                if name in with_rows:
                    conn.execute(text(f"DELETE FROM {name}"))  # noqa: S608 (our metadata)
            for sequence in sequences:
                conn.execute(text(f"ALTER SEQUENCE {sequence} RESTART"))
    except IntegrityError:
        # A reference the metadata's order does not see (a cycle): empty everything at once.
        if not postgres:
            raise
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A clean, migrated database on each backend (tables emptied before each test)."""
    url: str = request.getfixturevalue(f"{request.param}_database")
    _truncate(url)
    return url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings for one test on one backend."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        max_body_bytes=64 * 1024,
        max_upload_bytes=2 * 1024 * 1024,
        log_json=False,
        run_supervisors=False,
    )


# -- the app -------------------------------------------------------------------------


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Any]:
    """The app, with its lifespan running."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


UserFactory = Callable[..., Awaitable[tuple[User, dict[str, str]]]]


# One argon2id hash per password and test worker, for the users tests make: each hash costs
# ~0.1 s of CPU (64 MiB, 3 passes), seconds on a loaded machine, and most tests make one to
# three users with the same password. Logins still verify against a real hash.
_PASSWORD_HASHES: dict[str, str] = {}


async def _hash_once(password: str) -> str:
    if password not in _PASSWORD_HASHES:
        _PASSWORD_HASHES[password] = await security.hash_password_async(password)
    return _PASSWORD_HASHES[password]


@contextlib.asynccontextmanager
async def _hashing_each_password_once() -> AsyncIterator[None]:
    """While make_user creates its user, the service hashes each password only once."""
    real = account_service.hash_password_async
    account_service.hash_password_async = _hash_once  # type: ignore[assignment]
    try:
        yield
    finally:
        account_service.hash_password_async = real  # type: ignore[assignment]


@pytest.fixture
def make_user(app: Any) -> UserFactory:
    """Create a user and return it with bearer-token headers."""
    counter = {"n": 0}

    async def factory(
        role: Role | str = Role.MEMBER, username: str | None = None, password: str = "s3cret-pass!"
    ) -> tuple[User, dict[str, str]]:
        counter["n"] += 1
        role = Role(role)
        name = username or f"{role.value}{counter['n']}"
        async with app.state.sessionmaker() as session, _hashing_each_password_once():
            user = await account_service.create(
                session=session, user_in=UserCreate(username=name, password=password, role=role)
            )
            token, _ = await account_service.issue_token(
                session=session, user=user, kind=TokenKind.PERSONAL
            )
            await session.commit()
        return user, {"Authorization": f"Bearer {token}"}

    return factory


@pytest.fixture
async def member(make_user: UserFactory) -> dict[str, str]:
    """Headers of a member."""
    return (await make_user(Role.MEMBER))[1]


@pytest.fixture
async def operator(make_user: UserFactory) -> dict[str, str]:
    """Headers of an operator."""
    return (await make_user(Role.OPERATOR))[1]


@pytest.fixture
async def admin(make_user: UserFactory) -> dict[str, str]:
    """Headers of an admin."""
    return (await make_user(Role.ADMIN))[1]
