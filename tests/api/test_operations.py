"""Liveness, metrics, and the rule that every route declares its roles."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.routing import APIRoute

PUBLIC_ROUTES = {
    ("POST", "/api/v1/auth/token"),
    ("GET", "/healthz"),
    ("GET", "/favicon.ico"),  # a redirect to the static icon
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/api/v1/network/keys"),  # a shop's public key (JWKS)
    # The network: a pushed report is authenticated by its signature; reading a hub is public
    # when it publishes (MICROFACTORY_NETWORK_PUBLISH), else its dependency asks for a login.
    ("POST", "/api/v1/network/reports"),
    ("GET", "/api/v1/network/reports"),
    ("GET", "/api/v1/network/shops"),
    ("POST", "/api/v1/network/route"),
    # A shop's signed list of its public designs, and who holds a design (read as /shops is).
    ("POST", "/api/v1/network/designs"),
    ("GET", "/api/v1/network/designs/{content_hash}"),
    # Fabrication requests between shops: authenticated by the other shop's signature.
    ("POST", "/api/v1/network/requests"),
    ("POST", "/api/v1/network/requests/{request_id}/updates"),
}


async def test_healthz(client: httpx.AsyncClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json()["database"] == "ok"


async def test_metrics_count_requests_by_route(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    await client.get("/api/v1/machines/123", headers=member)
    text = (await client.get("/metrics")).text
    assert "microfactory_http_requests_total" in text
    # Labelled by route template, not by raw path.
    assert 'route="/api/v1/machines/{machine_id}"' in text
    assert "/api/v1/machines/123" not in text


async def test_openapi_is_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/api/v1/machines" in spec["paths"]
    assert "/api/v1/auth/token" in spec["paths"]
    # No page that needs a CDN: the server works offline.
    assert (await client.get("/docs")).status_code == 404


def _declared_roles(dependant: Any) -> set[str]:
    roles: set[str] = set()
    for dep in dependant.dependencies:
        allowed = getattr(dep.call, "allowed_roles", None)
        if allowed:
            roles |= {r.value for r in allowed}
        roles |= _declared_roles(dep)
    return roles


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, including those inside included routers (FastAPI wraps them)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found.extend(_api_routes(list(inner.routes)))
    return found


def test_the_audit_sees_every_router(app: Any) -> None:
    paths = {r.path_format for r in _api_routes(app.routes)}  # {id}, not {id:int}
    for expected in ("/api/v1/machines", "/api/v1/jobs/{job_id}/dispatch", "/api/v1/bookings"):
        assert expected in paths
    assert len(paths) > 50


def test_every_route_declares_its_roles(app: Any) -> None:
    undeclared = []
    for route in _api_routes(app.routes):
        for method in route.methods:
            if (method, route.path_format) in PUBLIC_ROUTES:
                continue
            if not _declared_roles(route.dependant):
                undeclared.append(f"{method} {route.path_format}")
    assert undeclared == []
