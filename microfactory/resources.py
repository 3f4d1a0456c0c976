"""Find the files the package ships: migrations, dashboard templates and static files, demo data.

The repository keeps `migrations/` and `web/` at its top level (the fixed layout); the wheel
installs them as the packages `microfactory.migrations` and `microfactory.assets` (pyproject.toml
maps them). `importlib.resources` finds them in a wheel install and in an editable one alike.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path


class MissingResourceError(RuntimeError):
    """A file the package ships is missing: the installation is broken."""


def _package_dir(package: str) -> Path:
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise MissingResourceError(
            f"{package} is not installed; reinstall microfactory (pip install .)"
        ) from None
    # Wheels install as plain files, so the traversable is a real directory; Alembic and
    # Starlette's StaticFiles need one.
    path = Path(str(root))
    if not path.is_dir():
        raise MissingResourceError(f"{package} is not a directory on disk ({path})")
    return path


@cache
def migrations_dir() -> Path:
    """Return the Alembic script directory."""
    return _package_dir("microfactory.migrations")


@cache
def web_dir() -> Path:
    """Return the dashboard's folder (templates/ and static/)."""
    return _package_dir("microfactory.assets")


@cache
def demo_data_dir() -> Path:
    """Return the demo shop's designs."""
    return _package_dir("microfactory") / "demo_data"
