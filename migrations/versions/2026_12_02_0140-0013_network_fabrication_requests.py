"""fabrication requests between shops, their message log, and pinned peer keys

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 01:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import microfactory.db

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this migration."""
    op.create_table(
        "network_requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("peer_shop_id", sa.String(length=64), nullable=False),
        sa.Column("peer_url", sa.String(length=500), nullable=False),
        sa.Column("design_hash", sa.String(length=64), nullable=False),
        sa.Column("design_title", sa.String(length=200), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("material", sa.String(length=64), nullable=True),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("due_date", sa.String(length=10), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("contact", sa.String(length=200), nullable=True),
        sa.Column("member_id", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("design_id", sa.Integer(), nullable=True),
        sa.Column("quote", sa.JSON(), nullable=True),
        sa.Column("outcome", sa.String(length=8), nullable=True),
        sa.Column("last_peer_sequence", sa.BigInteger(), nullable=False),
        sa.Column("created_at", microfactory.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", microfactory.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["design_id"],
            ["designs.id"],
            name=op.f("fk_network_requests_design_id_designs"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_network_requests_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["users.id"],
            name=op.f("fk_network_requests_member_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_requests")),
    )
    with op.batch_alter_table("network_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_network_requests_state"), ["state"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_network_requests_member_id"), ["member_id"], unique=False
        )
    op.create_table(
        "network_request_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("at", microfactory.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("jws", sa.Text(), nullable=False),
        sa.Column("delivery", sa.String(length=300), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["network_requests.id"],
            name=op.f("fk_network_request_messages_request_id_network_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_request_messages")),
    )
    with op.batch_alter_table("network_request_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_network_request_messages_request_id_id", ["request_id", "id"], unique=False
        )
    op.create_table(
        "network_peer_keys",
        sa.Column("url", sa.String(length=500), nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("pinned_at", microfactory.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("url", name=op.f("pk_network_peer_keys")),
    )


def downgrade() -> None:
    """Revert this migration."""
    op.drop_table("network_peer_keys")
    with op.batch_alter_table("network_request_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_network_request_messages_request_id_id")
    op.drop_table("network_request_messages")
    with op.batch_alter_table("network_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_network_requests_member_id"))
        batch_op.drop_index(batch_op.f("ix_network_requests_state"))
    op.drop_table("network_requests")
