"""Run Alembic migrations from code (the CLI and the tests use this)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from microfactory import resources
from microfactory.config import Settings


def alembic_config(settings: Settings) -> Config:
    """Return an Alembic config for these settings."""
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.migrations_dir()))
    cfg.set_main_option(
        "file_template",
        "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d-%%(rev)s_%%(slug)s",
    )
    # '%' is ConfigParser interpolation syntax; URLs with escaped characters need doubling.
    cfg.set_main_option("sqlalchemy.url", settings.sync_database_url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings, revision: str = "heads") -> None:
    """Migrate the database up to a revision."""
    if settings.sync_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str) -> None:
    """Migrate the database down to a revision."""
    command.downgrade(alembic_config(settings), revision)


def problem(settings: Settings) -> str | None:
    """Say what to run when the database is missing, unreachable or not migrated; else None."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    url = make_url(settings.sync_database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database or "")
        if not path.is_file():
            # Connecting would create an empty file (and fail if the folder is missing).
            return (
                f"there is no database at {path}; run `microfactory db upgrade` first "
                "(`microfactory serve` also migrates)"
            )
    heads = set(ScriptDirectory.from_config(alembic_config(settings)).get_heads())
    engine = create_engine(url)
    quiet = logging.getLogger("alembic.runtime.migration")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # "Context impl SQLiteImpl." is noise in a CLI error
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        return f"cannot open the database {url.render_as_string(hide_password=True)}: {reason}"
    finally:
        quiet.setLevel(level)
        engine.dispose()
    if current != heads:
        state = "is empty" if not current else "is not migrated to the newest revision"
        return f"the database {state}; run `microfactory db upgrade` first"
    return None
