"""Leaks: credentials in URLs, the calendar feed token, other members' jobs, metric labels,
internal file names."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from microfactory.app import create_app
from microfactory.config import Settings
from microfactory.machines.models import Machine
from tests.conftest import UserFactory

CSRF = "test-csrf-token-value"
STORED_NAME = re.compile(r"[0-9a-f]{32}")


async def test_credentials_in_machine_urls_are_masked_like_api_keys(
    app: Any, client: httpx.AsyncClient, operator: dict[str, str], member: dict[str, str]
) -> None:
    body = {
        "name": "Octo",
        "kind": "fdm_printer",
        "driver": "octoprint",
        "connection": {
            "url": "http://pi:raspberry-secret@octopi.local:5000/",
            "api_key": "ABCDEF0123456789WXYZ",
        },
    }
    created = await client.post("/api/v1/machines", json=body, headers=operator)
    assert created.status_code == 201, created.text
    machine_id = created.json()["id"]
    for resp in (
        await client.get(f"/api/v1/machines/{machine_id}", headers=member),
        await client.get("/api/v1/machines", headers=member),
        created,
    ):
        assert "raspberry-secret" not in resp.text
        assert "pi:" not in resp.text
    shown = (await client.get(f"/api/v1/machines/{machine_id}", headers=member)).json()
    assert shown["connection"]["url"] == "http://****@octopi.local:5000/"
    assert shown["connection"]["api_key"] == "****WXYZ"
    # Sending the masked values back (to change another setting) keeps the stored ones.
    connection = {**shown["connection"], "printer_port": "VIRTUAL"}
    patched = await client.patch(
        f"/api/v1/machines/{machine_id}", json={"connection": connection}, headers=operator
    )
    assert patched.status_code == 200, patched.text
    async with app.state.sessionmaker() as session:
        machine = await session.get(Machine, machine_id)
        assert machine is not None
        assert machine.connection["url"] == "http://pi:raspberry-secret@octopi.local:5000/"
        assert machine.connection["api_key"] == "ABCDEF0123456789WXYZ"
        assert machine.connection["printer_port"] == "VIRTUAL"


async def test_the_calendar_feed_url_is_shown_in_the_body_not_the_page_url(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    await make_user("member", username="maria", password="maria-pass-1")
    browser = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    browser.cookies.set("mf_csrf", CSRF)
    logged_in = await browser.post(
        "/login", data={"username": "maria", "password": "maria-pass-1", "csrf_token": CSRF}
    )
    assert logged_in.status_code == 303
    made = await browser.post("/bookings/feed", data={"csrf_token": CSRF, "action": "new"})
    assert made.status_code == 200
    assert "location" not in made.headers
    assert made.headers["cache-control"] == "no-store"
    token = re.search(r"token=(cal_[A-Za-z0-9_-]+)", made.text)
    assert token is not None
    # Shown once: the page shows only its prefix afterwards, and a feed_url in the query
    # string is not echoed (an old link cannot plant a URL on the page either).
    later = await browser.get("/bookings", params={"feed_url": "https://evil.example/x"})
    assert token.group(1) not in later.text
    assert "evil.example" not in later.text


async def test_made_up_http_methods_do_not_add_metric_series(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    for n in range(20):
        await client.request(f"BREW{n}", "/healthz")
    metrics = (await client.get("/metrics")).text
    assert "BREW" not in metrics
    assert 'method="other"' in metrics
    assert 'method="GET"' in metrics


async def test_error_messages_do_not_name_internal_stored_files(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    resp = await client.post(
        "/api/v1/designs",
        files={"files": ("part.gcode", b"\xff\xfe not utf-8", "text/x-gcode")},
        data={"title": "Broken", "licence": "CC0-1.0"},
        headers=member,
    )
    assert resp.status_code == 422
    assert "part.gcode" in resp.json()["detail"]
    assert not STORED_NAME.search(resp.text), resp.text


# -- live status: members see only their own jobs -----------------------------------------

LONG_PROGRAM = b"G21\nG90\nG1 F300\n" + b"".join(
    f"G1 X{(i % 2) * 50} Y{i % 50}\n".encode() for i in range(400)
)


@pytest.fixture
async def live_client(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    application = create_app(
        settings.model_copy(update={"run_supervisors": True, "auto_dispatch": False})
    )
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield application, c


async def _poll(check: Any, within: float = 60.0) -> Any:
    async with asyncio.timeout(within):
        while True:
            if result := await check():
                return result
            await asyncio.sleep(0.1)


async def first_stream_events(app: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Read the snapshot events of the SSE stream, then disconnect."""
    raw = [(b"host", b"testserver")] + [
        (k.lower().encode(), v.encode()) for k, v in headers.items()
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/machines/stream",
        "raw_path": b"/api/v1/machines/stream",
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    got = asyncio.Event()
    body = bytearray()

    async def receive() -> dict[str, Any]:
        await got.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            if b"event: machine" in body:
                got.set()

    task = asyncio.create_task(app(scope, receive, send))
    await asyncio.wait_for(got.wait(), 30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return [
        json.loads(line[len("data: ") :])
        for line in body.decode().splitlines()
        if line.startswith("data: ")
    ]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_live_status_shows_members_only_their_own_job(
    live_client: tuple[Any, httpx.AsyncClient], make_user: UserFactory
) -> None:
    app, client = live_client
    _, staff = await make_user("operator")
    _, owner = await make_user("member", username="owner")
    _, other = await make_user("member", username="other")
    body = {
        "name": "Mill",
        "kind": "cnc_mill",
        "driver": "sim-grbl",
        "connection": {"speed_factor": 1},
        "build_volume_mm": {"x": 300, "y": 300, "z": 60},
    }
    mill = (await client.post("/api/v1/machines", json=body, headers=staff)).json()

    async def status(headers: dict[str, str]) -> dict[str, Any]:
        resp = await client.get(f"/api/v1/machines/{mill['id']}", headers=headers)
        return dict(resp.json()["status"])

    await _poll(lambda: _state_is(status(staff), "idle"))
    job = (
        await client.post(
            "/api/v1/jobs",
            files={"file": ("part.nc", LONG_PROGRAM, "text/plain")},
            data={"machine_id": str(mill["id"])},
            headers=owner,
        )
    ).json()
    await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=staff)
    dispatched = await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=staff)
    assert dispatched.status_code == 200, dispatched.text

    async def line_known() -> bool:
        st = await status(staff)
        return st["job_id"] == job["id"] and bool((st.get("progress") or {}).get("last_line"))

    await _poll(line_known)
    try:
        mine = await status(owner)
        assert mine["job_id"] == job["id"]
        assert mine["progress"]["last_line"]
        theirs = await status(other)
        assert theirs["state"] in ("running", "paused")  # they see the machine is busy...
        assert theirs["job_id"] is None  # ...but not whose job, nor what it sends
        assert theirs["progress"]["last_line"] is None
        listed = (await client.get("/api/v1/machines", headers=other)).json()
        assert [m["status"]["job_id"] for m in listed] == [None]
        streamed = await first_stream_events(app, other)
        assert streamed
        assert all(e["status"]["job_id"] is None for e in streamed)
        assert all((e["status"].get("progress") or {}).get("last_line") is None for e in streamed)
        own_stream = await first_stream_events(app, owner)
        assert [e["status"]["job_id"] for e in own_stream] == [job["id"]]
    finally:
        await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=staff)


async def _state_is(st: Any, state: str) -> bool:
    return bool((await st)["state"] == state)


async def test_dashboard_machine_page_hides_other_members_jobs(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The /machines page filters the status it renders like the API does."""
    _, staff = await make_user("operator")
    _, owner_headers = await make_user("member", username="owner")
    await make_user("member", username="other", password="other-pass-1")
    body = {"name": "Mill", "kind": "cnc_mill", "driver": "manual", "connection": {}}
    await client.post("/api/v1/machines", json=body, headers=staff)
    job = (
        await client.post(
            "/api/v1/jobs",
            files={"file": ("part.nc", LONG_PROGRAM, "text/plain")},
            data={"machine_kind": "cnc_mill"},
            headers=owner_headers,
        )
    ).json()
    async with app.state.sessionmaker() as session:
        machine = (await session.execute(select(Machine))).scalar_one()
    live = {
        "state": "running",
        "job_id": job["id"],
        "progress": {"percent": 10.0, "last_line": "G1 X50 Y7"},
    }
    # No supervisor runs in this app: stand in for the fleet's snapshot of this machine.
    monkeypatch.setattr(app.state.fleet, "status", lambda m: live if m.id == machine.id else {})
    browser = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    browser.cookies.set("mf_csrf", CSRF)
    await browser.post(
        "/login", data={"username": "other", "password": "other-pass-1", "csrf_token": CSRF}
    )
    page = await browser.get("/machines")
    assert page.status_code == 200
    assert f"/jobs/{job['id']}" not in page.text
    assert "G1 X50 Y7" not in page.text


async def test_debug_logging_does_not_repeat_sql_parameters(
    tmp_path: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """At DEBUG, aiosqlite would print each statement with its parameters (a machine's
    connection settings, members' e-mail addresses, ...). The log never carries them."""
    import logging

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from microfactory.logs import configure_logging

    root = logging.getLogger()
    saved = (root.level, root.handlers[:], logging.getLogger("aiosqlite").level)
    configure_logging("DEBUG", json_logs=True)
    try:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'leak.db'}")
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE m (connection TEXT)"))
            await conn.execute(
                text("INSERT INTO m VALUES (:c)"),
                {"c": '{"url": "http://octopi.local", "api_key": "S3CRET-key-0042"}'},
            )
        await engine.dispose()
        logging.getLogger("microfactory.test").debug("debug lines still pass")
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logging.getLogger("aiosqlite").setLevel(saved[2])
    err = capfd.readouterr().err
    assert "debug lines still pass" in err
    assert "S3CRET-key-0042" not in err
    assert "octopi.local" not in err
