"""Body limits by route, and authentication before the body is read.

The app is driven through ASGI directly, with a `receive` that hands out the body lazily
and counts what the app pulls: "the server did not read the body" is then a number, not a
timing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from microfactory.config import Settings
from tests.conftest import UserFactory

MiB = 1024 * 1024


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shipped limits: 1 MiB for bodies, 200 MiB for uploads."""
    return settings.model_copy(update={"max_body_bytes": 1 * MiB, "max_upload_bytes": 200 * MiB})


@dataclass
class Exchange:
    """What one driven request pulled from the client and what it answered."""

    pulled: int = 0
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


async def drive(
    app: Any,
    method: str,
    path: str,
    *,
    size: int,
    content_type: str,
    headers: dict[str, str] | None = None,
    declare_length: bool = True,
    chunk: int = 64 * 1024,
) -> Exchange:
    """Send a request whose body of `size` bytes is produced only as the app asks for it."""
    ex = Exchange()
    raw_headers = [(b"host", b"testserver"), (b"content-type", content_type.encode())]
    if declare_length:
        raw_headers.append((b"content-length", str(size).encode()))
    for name, value in (headers or {}).items():
        raw_headers.append((name.lower().encode(), value.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    answered = False

    async def receive() -> dict[str, Any]:
        if answered or ex.pulled >= size:
            return {"type": "http.disconnect"}
        n = min(chunk, size - ex.pulled)
        ex.pulled += n
        return {"type": "http.request", "body": b"x" * n, "more_body": ex.pulled < size}

    async def send(message: dict[str, Any]) -> None:
        nonlocal answered
        if message["type"] == "http.response.start":
            ex.status = message["status"]
            ex.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            ex.body += message.get("body", b"")
            if not message.get("more_body"):
                answered = True

    await app(scope, receive, send)
    return ex


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
async def test_anonymous_100_mb_json_gets_401_without_the_body_being_read(
    app: Any, declare_length: bool
) -> None:
    ex = await drive(
        app,
        "POST",
        "/api/v1/jobs/99/priority",
        size=100 * MiB,
        content_type="application/json",
        declare_length=declare_length,
    )
    assert ex.status == 401
    assert ex.pulled == 0
    assert ex.headers.get("www-authenticate") == "Bearer"


async def test_anonymous_150_mb_multipart_design_gets_401_without_the_body_being_read(
    app: Any,
) -> None:
    ex = await drive(
        app,
        "POST",
        "/api/v1/designs",
        size=150 * MiB,
        content_type="multipart/form-data; boundary=xyz",
    )
    assert ex.status == 401
    assert ex.pulled == 0


async def test_a_bad_token_gets_401_without_the_body_being_read(app: Any) -> None:
    ex = await drive(
        app,
        "POST",
        "/api/v1/jobs",
        size=150 * MiB,
        content_type="multipart/form-data; boundary=xyz",
        headers={"Authorization": "Bearer mf_not-a-real-token"},
    )
    assert ex.status == 401
    assert ex.pulled == 0
    assert b"invalid, expired or revoked token" in ex.body


async def test_a_member_gets_403_on_an_operator_route_without_the_body_being_read(
    app: Any, member: dict[str, str]
) -> None:
    ex = await drive(
        app,
        "POST",
        "/api/v1/jobs/1/priority",
        size=50 * MiB,
        content_type="application/json",
        headers=member,
    )
    assert ex.status == 403
    assert ex.pulled == 0


async def test_anonymous_dashboard_upload_is_sent_to_login_without_the_body_being_read(
    app: Any,
) -> None:
    ex = await drive(
        app,
        "POST",
        "/jobs/new",
        size=150 * MiB,
        content_type="multipart/form-data; boundary=xyz",
        headers={"Cookie": "mf_session=mf_stale-session"},
    )
    assert ex.status == 303
    assert ex.headers["location"] == "/login?next=/jobs/new"
    assert ex.pulled == 0


@pytest.mark.parametrize(
    "path", ["/api/v1/jobs/1/priority", "/api/v1/designs/1/parameters", "/api/v1/jobs"]
)
async def test_json_bodies_get_the_general_limit_even_under_upload_paths(
    app: Any, operator: dict[str, str], path: str
) -> None:
    ex = await drive(
        app,
        "POST",
        path,
        size=2 * MiB,
        content_type="application/json",
        headers=operator,
        declare_length=False,
    )
    assert ex.status == 413
    assert ex.pulled <= 1 * MiB + 64 * 1024  # stopped at the limit, not read to the end
    assert b"larger than the limit of 1048576 bytes" in ex.body


async def test_multipart_uploads_still_get_the_upload_limit(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    _, headers = await make_user("operator")
    machine = {
        "name": "Printer",
        "kind": "fdm_printer",
        "driver": "marlin",
        "connection": {"port": "/dev/ttyACM0"},
        "build_volume_mm": {"x": 220, "y": 220, "z": 250},
    }
    assert (await client.post("/api/v1/machines", json=machine, headers=headers)).is_success
    line = b"G1 X10 Y10 E0.5 F1200 ; a long enough comment to grow the file quickly\n"
    gcode = b"G28\nG90\nM82\n" + line * (int(1.5 * MiB) // len(line))
    assert len(gcode) > MiB
    resp = await client.post(
        "/api/v1/jobs",
        files={"file": ("big.gcode", gcode, "text/x-gcode")},
        data={"machine_kind": "fdm_printer"},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text


async def test_login_and_public_routes_are_not_gated(client: httpx.AsyncClient) -> None:
    resp = await client.post("/api/v1/auth/token", data={"username": "x", "password": "y"})
    assert resp.status_code == 401
    assert resp.json()["detail"] == "incorrect username or password"
