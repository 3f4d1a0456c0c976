"""The routers of bookings, usage reports, costs and their dashboard pages, for create_app."""

from __future__ import annotations

from fastapi import APIRouter

from microfactory.bookings.routes import router as bookings_router


def routers() -> list[APIRouter]:
    """Return the routers to include in the app."""
    return [bookings_router]
