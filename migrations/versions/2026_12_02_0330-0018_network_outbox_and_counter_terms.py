"""an outbox of signed messages to deliver to other shops; a counter-offer's terms

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02 03:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import microfactory.db

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this migration."""
    op.create_table(
        "network_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("url", sa.String(length=600), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", microfactory.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", microfactory.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("note", sa.String(length=300), nullable=True),
        sa.Column("created_at", microfactory.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", microfactory.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["network_request_messages.id"],
            name=op.f("fk_network_outbox_message_id_network_request_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_outbox")),
        sa.UniqueConstraint("message_id", name=op.f("uq_network_outbox_message_id")),
    )
    op.create_index(
        op.f("ix_network_outbox_request_id"), "network_outbox", ["request_id"], unique=False
    )
    op.create_index(
        "ix_network_outbox_state_next_attempt_at",
        "network_outbox",
        ["state", "next_attempt_at"],
        unique=False,
    )
    with op.batch_alter_table("network_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("terms", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Revert this migration."""
    with op.batch_alter_table("network_requests", schema=None) as batch_op:
        batch_op.drop_column("terms")
    op.drop_index("ix_network_outbox_state_next_attempt_at", table_name="network_outbox")
    op.drop_index(op.f("ix_network_outbox_request_id"), table_name="network_outbox")
    op.drop_table("network_outbox")
