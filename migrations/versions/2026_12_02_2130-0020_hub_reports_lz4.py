"""PostgreSQL: stored reports' JWS text is TOAST-compressed with lz4 instead of pglz

An 8 KB report compresses to the same size either way; pglz costs the server ~0.1 ms a
report on ingest, lz4 a third of that (docs/benchmarks.md). Only where the server was built
with lz4 (Debian's is); SQLite and other servers are left as they are. Rows already stored
keep their compression until rewritten.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-02 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (("hub_reports", "jws"), ("hub_shops", "pending_jws"))


def _has_lz4() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    values = bind.execute(
        sa.text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    return bool(values) and "lz4" in values


def upgrade() -> None:
    """Apply this migration."""
    if _has_lz4():
        for table, column in COLUMNS:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION lz4")


def downgrade() -> None:
    """Revert this migration."""
    if _has_lz4():
        for table, column in COLUMNS:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION DEFAULT")
