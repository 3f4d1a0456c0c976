"""hubs index the public designs shops hold, by content hash

Revision ID: 0018b
Revises: 0018
Create Date: 2026-12-02 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import microfactory.db

revision: str = "0018b"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this migration."""
    op.create_table(
        "hub_designs",
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("licence", sa.String(length=100), nullable=False),
        sa.Column("updated_at", microfactory.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("shop_id", "content_hash", name=op.f("pk_hub_designs")),
    )
    op.create_index("ix_hub_designs_content_hash", "hub_designs", ["content_hash"], unique=False)
    op.create_table(
        "hub_design_lists",
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("received_at", microfactory.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("shop_id", name=op.f("pk_hub_design_lists")),
    )


def downgrade() -> None:
    """Revert this migration."""
    op.drop_table("hub_design_lists")
    op.drop_index("ix_hub_designs_content_hash", table_name="hub_designs")
    op.drop_table("hub_designs")
