"""a member's messages record when they were read (the unread badge)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 01:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import microfactory.db

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this migration."""
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("read_at", microfactory.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index("ix_notifications_user_read", ["user_id", "read_at"])


def downgrade() -> None:
    """Revert this migration."""
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_user_read")
        batch_op.drop_column("read_at")
