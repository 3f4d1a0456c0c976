"""hub: pinned shops, reports as received, upstream cursors, the routing index

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 00:30:00

On PostgreSQL the routing index gets `cube`, `earthdistance` and `btree_gist` (contrib,
trusted extensions) and GiST indexes on `ll_to_earth(lat, lon)` (the offers' led by process
and material); SQLite uses the plain (lat, lon) b-tree indexes
as a bounding-box prefilter.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("pending", "approved", "revoked")


def _pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    """Apply this migration."""
    op.create_table(
        "hub_shops",
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*STATUSES, name="pinstatus", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("url", sa.String(length=500), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=True),
        sa.Column("pending_jws", sa.Text(), nullable=True),
        sa.Column("pending_source", sa.String(length=500), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("shop_id", name=op.f("pk_hub_shops")),
    )
    op.create_table(
        "hub_reports",
        sa.Column("cursor", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("jws", sa.Text(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=500), nullable=False),
        sa.PrimaryKeyConstraint("cursor", name=op.f("pk_hub_reports")),
        sa.UniqueConstraint("shop_id", "sequence", name="uq_hub_reports_shop_sequence"),
    )
    op.create_index(op.f("ix_hub_reports_shop_id"), "hub_reports", ["shop_id"], unique=False)
    op.create_table(
        "hub_upstreams",
        sa.Column("url", sa.String(length=500), nullable=False),
        sa.Column("next_cursor", sa.Integer(), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_ok_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("stored", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.Column("last_refusal", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("url", name=op.f("pk_hub_upstreams")),
    )
    op.create_table(
        "hub_shop_index",
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("report_cursor", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("url", sa.String(length=500), nullable=False),
        sa.Column("city", sa.String(length=200), nullable=False),
        sa.Column("country", sa.String(length=64), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processes", sa.JSON(), nullable=False),
        sa.Column("materials", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("shop_id", name=op.f("pk_hub_shop_index")),
    )
    op.create_index(
        op.f("ix_hub_shop_index_expires_at"), "hub_shop_index", ["expires_at"], unique=False
    )
    op.create_index("ix_hub_shop_index_lat_lon", "hub_shop_index", ["lat", "lon"], unique=False)
    op.create_table(
        "hub_offers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("shop_name", sa.String(length=200), nullable=False),
        sa.Column("process", sa.String(length=32), nullable=False),
        sa.Column("material", sa.String(length=64), nullable=False),
        sa.Column("machine", sa.String(length=200), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("dim_a", sa.Float(), nullable=False),
        sa.Column("dim_b", sa.Float(), nullable=False),
        sa.Column("dim_c", sa.Float(), nullable=False),
        sa.Column("nozzle_mm", sa.Float(), nullable=True),
        sa.Column("laser_w", sa.Float(), nullable=True),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wait_h", sa.Float(), nullable=False),
        sa.Column("on_hand", sa.Boolean(), nullable=True),
        sa.Column("free_from", sa.String(length=10), nullable=False),
        sa.Column("free_hours", sa.String(length=200), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_offers")),
    )
    op.create_index(op.f("ix_hub_offers_shop_id"), "hub_offers", ["shop_id"], unique=False)
    op.create_index(
        "ix_hub_offers_process_material_lat",
        "hub_offers",
        ["process", "material", "lat"],
        unique=False,
    )
    if _pg():
        op.execute("CREATE EXTENSION IF NOT EXISTS cube")
        op.execute("CREATE EXTENSION IF NOT EXISTS earthdistance")
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")  # also the bookings' (0003b)
        op.execute(
            "CREATE INDEX ix_hub_offers_earth ON hub_offers "
            "USING gist (process, material, ll_to_earth(lat, lon))"
        )
        op.execute(
            "CREATE INDEX ix_hub_shop_index_earth ON hub_shop_index "
            "USING gist (ll_to_earth(lat, lon))"
        )


def downgrade() -> None:
    """Revert this migration."""
    if _pg():
        op.execute("DROP INDEX IF EXISTS ix_hub_shop_index_earth")
        op.execute("DROP INDEX IF EXISTS ix_hub_offers_earth")
    op.drop_index("ix_hub_offers_process_material_lat", table_name="hub_offers")
    op.drop_index(op.f("ix_hub_offers_shop_id"), table_name="hub_offers")
    op.drop_table("hub_offers")
    op.drop_index("ix_hub_shop_index_lat_lon", table_name="hub_shop_index")
    op.drop_index(op.f("ix_hub_shop_index_expires_at"), table_name="hub_shop_index")
    op.drop_table("hub_shop_index")
    op.drop_table("hub_upstreams")
    op.drop_index(op.f("ix_hub_reports_shop_id"), table_name="hub_reports")
    op.drop_table("hub_reports")
    op.drop_table("hub_shops")
    if _pg():
        # Nothing else in the schema uses these two (btree_gist stays: the bookings' exclusion
        # constraint needs it, and its migration owns it).
        op.execute("DROP EXTENSION IF EXISTS earthdistance")
        op.execute("DROP EXTENSION IF EXISTS cube")
