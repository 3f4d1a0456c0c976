"""job events: the history of every job's state transitions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 21:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import microfactory.db

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATES = (
    "submitted",
    "approved",
    "queued",
    "assigned",
    "running",
    "paused",
    "finished",
    "failed",
    "cancelled",
    "cleared",
)


def _state() -> sa.Enum:
    return sa.Enum(*_STATES, name="jobstate", native_enum=False, length=16)


def upgrade() -> None:
    """Apply this migration."""
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("from_state", _state(), nullable=True),
        sa.Column("to_state", _state(), nullable=False),
        sa.Column("at", microfactory.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("last_acked_line", sa.Integer(), nullable=True),
        sa.Column("last_line_text", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_job_events_actor_id_users")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_events_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.create_index("ix_job_events_job_id_id", ["job_id", "id"], unique=False)


def downgrade() -> None:
    """Revert this migration."""
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.drop_index("ix_job_events_job_id_id")
    op.drop_table("job_events")
