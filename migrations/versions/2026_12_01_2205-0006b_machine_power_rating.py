"""a machine's power rating lives on the machine, not on its booking profile

Revision ID: 0006b
Revises: 0006
Create Date: 2026-12-01 22:05:00.000000

The copy of the values runs between the two schema steps, against small table stubs (not the
ORM), so that no rating is lost either way.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006b"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

machines = sa.table("machines", sa.column("id", sa.Integer), sa.column("power_w", sa.Double))
profiles = sa.table(
    "machine_profiles", sa.column("machine_id", sa.Integer), sa.column("power_w", sa.Double)
)


def upgrade() -> None:
    """Apply this migration."""
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("power_w", sa.Double(), nullable=True))
    rated = (
        sa.select(profiles.c.power_w)
        .where(profiles.c.machine_id == machines.c.id)
        .scalar_subquery()
    )
    op.execute(machines.update().values(power_w=rated))
    with op.batch_alter_table("machine_profiles", schema=None) as batch_op:
        batch_op.drop_column("power_w")


def downgrade() -> None:
    """Revert this migration."""
    with op.batch_alter_table("machine_profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("power_w", sa.Double(), nullable=True))
    rated = (
        sa.select(machines.c.power_w)
        .where(machines.c.id == profiles.c.machine_id)
        .scalar_subquery()
    )
    op.execute(profiles.update().values(power_w=rated))
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_column("power_w")
