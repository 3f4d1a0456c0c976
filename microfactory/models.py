"""Import every model so that the metadata is complete (Alembic and tests use this)."""

from microfactory.accounts.models import ApiToken, User
from microfactory.db import Base
from microfactory.jobs.models import Job
from microfactory.machines.models import Machine
from microfactory.usage.models import UsageRecord

__all__ = ["ApiToken", "Base", "Job", "Machine", "UsageRecord", "User"]
