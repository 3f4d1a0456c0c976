"""Migrations: empty database to head and back to base, and no drift from the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from microfactory import migrate
from microfactory.config import Settings
from microfactory.models import Base
from tests.conftest import PG_URL, _drop_pg_database, _make_pg_database, require_or_skip


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_settings(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'm.sqlite3'}")
        return
    require_or_skip(bool(PG_URL), "PostgreSQL is not running (MICROFACTORY_TEST_POSTGRES_URL)")
    assert PG_URL
    url = _make_pg_database(PG_URL)
    yield Settings(database_url=url)
    _drop_pg_database(PG_URL, url)


def test_upgrade_to_heads_matches_models_and_downgrade_to_base(empty_settings: Settings) -> None:
    migrate.upgrade(empty_settings, "heads")
    engine = create_engine(empty_settings.sync_database_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
        tables = set(inspect(conn).get_table_names())
    assert diff == []
    assert {t.name for t in Base.metadata.sorted_tables} <= tables

    migrate.downgrade(empty_settings, "base")
    with engine.connect() as conn:
        left = set(inspect(conn).get_table_names()) - {"alembic_version"}
    engine.dispose()
    assert left == set()

    # And up again: downgrades leave nothing behind that blocks a re-run.
    migrate.upgrade(empty_settings, "heads")
