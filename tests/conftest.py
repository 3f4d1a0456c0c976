"""Shared fixtures: settings per database backend, a migrated database, the app, clients.

API and service tests take the `settings` fixture, which is parametrised over SQLite and
PostgreSQL, so the same suite runs on both. The PostgreSQL server is the throwaway cluster
the test command starts (scripts/pg.sh); its URL arrives in MICROFACTORY_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text

from microfactory import migrate
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


# The longest test files, longest first (from `--durations` in CI). The test command spreads
# files over two workers (pytest-xdist, `--dist loadfile`); handing these out first keeps one
# worker from being left with a long file at the end while the other sits idle.
LONGEST_FILES = (
    "tests/fuzz/test_schemathesis.py",
    "tests/runtime/test_multiprocess.py",
    "tests/browser/test_design_flow.py",
    "tests/test_packaging.py",
    "tests/integration/test_octoprint_jobs.py",
    "tests/drivers/marlin/test_marlin_virtual_printer.py",
    "tests/drivers/marlin/test_marlin_sim.py",
    "tests/unit/analysis/test_analysis_memory.py",
    "tests/security/test_security_orphans.py",
    "tests/browser/test_bookings.py",
)


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
    _drop_pg_database(PG_URL, url)


def _truncate(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        existing = set(inspect(conn).get_table_names())
        tables = [t.name for t in reversed(Base.metadata.sorted_tables) if t.name in existing]
        if url.startswith("postgresql"):
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))  # noqa: S608 (names from our metadata)
    engine.dispose()


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
        async with app.state.sessionmaker() as session:
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
