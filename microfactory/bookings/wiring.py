"""The routers of bookings, usage reports, costs and their dashboard pages, for create_app."""

from __future__ import annotations

from fastapi import APIRouter

from microfactory.bookings.pages import router as pages_router
from microfactory.bookings.routes import router as bookings_router
from microfactory.costs.routes import router as costs_router
from microfactory.usage.routes import router as usage_router


def routers() -> list[APIRouter]:
    """Return the routers to include in the app."""
    return [bookings_router, usage_router, costs_router, pages_router]
