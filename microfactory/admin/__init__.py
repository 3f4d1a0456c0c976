"""Admin screens of the dashboard: machines, rates and plans (the pages call the services)."""

from microfactory.admin.machines import router as machines_router
from microfactory.admin.rates import router as rates_router

routers = (machines_router, rates_router)

__all__ = ["routers"]
