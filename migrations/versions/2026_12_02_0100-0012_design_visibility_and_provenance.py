"""designs carry a visibility, and imported designs their provenance chain

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-02 01:00:00

Existing designs become `shop`: they stay visible to every member, as before, and none is
published to the network without someone choosing to.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import microfactory.db

revision: str = "0012"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this migration."""
    with op.batch_alter_table("designs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("visibility", sa.String(length=16), server_default="shop", nullable=False)
        )
    op.create_table(
        "design_provenance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("design_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("shop_url", sa.String(length=500), nullable=False),
        sa.Column("shop_id", sa.String(length=128), nullable=True),
        sa.Column("source_url", sa.String(length=1000), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("fetched_at", microfactory.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("imported_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["design_id"],
            ["designs.id"],
            name=op.f("fk_design_provenance_design_id_designs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["imported_by_id"],
            ["users.id"],
            name=op.f("fk_design_provenance_imported_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_design_provenance")),
        sa.UniqueConstraint("design_id", "position", name="uq_design_provenance_design_position"),
    )
    with op.batch_alter_table("design_provenance", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_design_provenance_design_id"), ["design_id"], unique=False
        )


def downgrade() -> None:
    """Revert this migration."""
    with op.batch_alter_table("design_provenance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_design_provenance_design_id"))
    op.drop_table("design_provenance")
    with op.batch_alter_table("designs", schema=None) as batch_op:
        batch_op.drop_column("visibility")
