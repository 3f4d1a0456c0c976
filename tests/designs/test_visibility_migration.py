"""0012: designs made before visibility existed become `shop`; downgrading drops it again."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from microfactory import migrate
from microfactory.config import Settings


def test_existing_designs_become_shop_only(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'm.sqlite3'}")
    migrate.upgrade(settings, "0007")
    engine = create_engine(settings.sync_database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO designs (id, content_hash, title, description, licence, authors, "
                "tags, search_text, created_at, updated_at) VALUES (1, :h, 'Old', '', 'MIT', "
                "'[]', '[]', 'old', '2026-11-30', '2026-11-30')"
            ),
            {"h": "a" * 64},
        )
    migrate.upgrade(settings, "0012")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, visibility FROM designs")).all()
        assert "design_provenance" in inspect(conn).get_table_names()
    assert [tuple(r) for r in rows] == [(1, "shop")]
    migrate.downgrade(settings, "0007")
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("designs")}
        tables = inspect(conn).get_table_names()
        kept = conn.execute(text("SELECT title FROM designs")).scalars().all()
    engine.dispose()
    assert "visibility" not in columns
    assert "design_provenance" not in tables
    assert kept == ["Old"]
