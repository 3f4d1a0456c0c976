"""a machine's webcam: an MJPEG stream and/or snapshot URL, kept server-side

Revision ID: 0016
Revises: 0014
Create Date: 2026-12-02 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this migration."""
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("webcam", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Revert this migration."""
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_column("webcam")
