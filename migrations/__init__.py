"""Alembic migrations; installed as `microfactory.migrations` (see pyproject.toml)."""
