"""merge designs bookings and queue

Revision ID: 0004
Revises: 0003a, 0003b, 0003c
Create Date: 2026-11-24 07:17:26.401773
"""

from collections.abc import Sequence

revision: str = "0004"
down_revision: str | None = ("0003a", "0003b", "0003c")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this migration."""
    pass


def downgrade() -> None:
    """Revert this migration."""
    pass
