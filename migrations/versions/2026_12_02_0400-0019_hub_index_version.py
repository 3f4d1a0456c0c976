"""the hub's routing index gets a version and a change log (in-memory copies per process)

Revision ID: 0019
Revises: 0018b
Create Date: 2026-12-02 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this migration."""
    version = op.create_table(
        "hub_index_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("log_floor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_index_version")),
    )
    op.bulk_insert(version, [{"id": 1, "version": 0, "log_floor": 0}])
    op.create_table(
        "hub_index_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_index_log")),
    )
    op.create_index(op.f("ix_hub_index_log_version"), "hub_index_log", ["version"], unique=False)


def downgrade() -> None:
    """Revert this migration."""
    op.drop_index(op.f("ix_hub_index_log_version"), table_name="hub_index_log")
    op.drop_table("hub_index_log")
    op.drop_table("hub_index_version")
