"""Import every model so that the metadata is complete (Alembic and tests use this)."""

from microfactory.accounts.models import ApiToken, User
from microfactory.db import Base
from microfactory.machines.models import Machine

__all__ = ["ApiToken", "Base", "Machine", "User"]
