"""Pushing the signed report to a real HTTP server on 127.0.0.1 that fails, then accepts.

A hub routes by the shop's location and refuses a report without one, so the shops here set
their profile first (the `located` fixture), as an admin would; one test leaves it unset.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from jwcrypto import jwk as jc_jwk
from jwcrypto import jws as jc_jws

from microfactory.config import Settings
from microfactory.network import identity, push
from microfactory.network.models import PushStatus
from microfactory.scheduler import Scheduler

NOW = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)


class FakeHub:
    """A hub on 127.0.0.1 answering 503 to the first `failures` reports, then 202."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[str, str]] = []  # (content type, body)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode("ascii")
                hub.received.append((self.headers.get("Content-Type", ""), body))
                if self.path != push.REPORTS_PATH:
                    self._answer(404, {"detail": "no such path"})
                elif len(hub.received) <= hub.failures:
                    self._answer(503, {"detail": "hub is starting"})
                else:
                    payload = json.loads(_payload(body))
                    self._answer(
                        202,
                        {
                            "shop_id": payload["shop_id"],
                            "sequence": payload["live"]["sequence"],
                            "status": "accepted",
                        },
                    )

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output quiet

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _payload(token: str) -> bytes:
    signed = jc_jws.JWS()
    signed.deserialize(token)
    return bytes(signed.objects["payload"])


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(failures=2) as h:
        yield h


@pytest.fixture
def settings(settings: Settings, hub: FakeHub) -> Settings:
    """The shop pushes to the fake hub."""
    return settings.model_copy(update={"network_hubs": [hub.url]})


PROFILE = {
    "name": "Fablab Gent",
    "url": "http://127.0.0.1:8001",
    "city": "Gent",
    "country": "BE",
    "lat": 51.0543,
    "lon": 3.7174,
    "accessType": "Public",
    "contact": "hello@example.org",
    "description": "Printers and a laser",
    "roundToCity": True,
}


async def _set_profile(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    resp = await client.put("/api/v1/network/profile", json=PROFILE, headers=admin)
    assert resp.status_code == 200, resp.text


@pytest.fixture
async def located(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """The shop's admin has set its profile, with its location."""
    await _set_profile(client, admin)


async def _status(app: Any, url: str) -> PushStatus:
    async with app.state.sessionmaker() as session:
        row = await session.get(PushStatus, url)
    assert row is not None
    return row


@pytest.mark.usefixtures("located")
async def test_failures_back_off_then_a_success_is_recorded(
    app: Any,
    client: httpx.AsyncClient,
    hub: FakeHub,
    settings: Settings,
    admin: dict[str, str],
    operator: dict[str, str],
) -> None:
    maker = app.state.sessionmaker

    async def run(seconds: float) -> dict[str, push.HubAnswer]:
        now = NOW + dt.timedelta(seconds=seconds)
        return await push.push_due(sessionmaker=maker, settings=settings, now=now)

    first = await run(0)
    assert first[hub.url].status_code == 503
    row = await _status(app, hub.url)
    assert row.failures == 1
    assert row.last_error == "HTTP 503: hub is starting"
    assert row.last_success_at is None
    assert row.next_attempt_at == NOW + dt.timedelta(seconds=push.BACKOFF_BASE_S)

    assert await run(push.BACKOFF_BASE_S - 1) == {}  # backing off: nothing sent
    assert len(hub.received) == 1

    second = await run(push.BACKOFF_BASE_S)
    assert second[hub.url].status_code == 503
    row = await _status(app, hub.url)
    assert row.failures == 2
    # The wait doubles: 5 s, then 10 s.
    assert row.next_attempt_at == NOW + dt.timedelta(seconds=3 * push.BACKOFF_BASE_S)
    assert await run(3 * push.BACKOFF_BASE_S - 1) == {}

    third = await run(3 * push.BACKOFF_BASE_S)
    assert third[hub.url].ok
    row = await _status(app, hub.url)
    assert (row.failures, row.last_status) == (0, "accepted")
    assert row.last_success_at == NOW + dt.timedelta(seconds=3 * push.BACKOFF_BASE_S)
    assert row.last_error == "HTTP 503: hub is starting"  # the last error stays on record

    # What the hub got: compact JWS bodies, signed by the shop, with growing sequences.
    shop = identity.shop_key(settings.data_dir)
    key = jc_jwk.JWK(**shop.public_jwk())
    sequences = []
    for content_type, body in hub.received:
        assert content_type == "application/jose"
        signed = jc_jws.JWS()
        signed.deserialize(body)
        signed.verify(key, alg="Ed25519")
        sequences.append(json.loads(signed.payload)["live"]["sequence"])
    assert sequences == sorted(set(sequences))
    assert row.last_sequence == sequences[-1]

    # Nothing changed: no push until TTL/3 has passed.
    assert await run(3 * push.BACKOFF_BASE_S + push.MIN_INTERVAL_S) == {}
    # A change (a new machine) is pushed once the debounce interval has passed ...
    resp = await client.post(
        "/api/v1/machines",
        json={"name": "Laser", "kind": "laser_cutter", "driver": "manual"},
        headers=operator,
    )
    assert resp.status_code == 201
    assert await run(3 * push.BACKOFF_BASE_S + 1) == {}  # ... not sooner
    changed = await run(3 * push.BACKOFF_BASE_S + push.MIN_INTERVAL_S)
    assert changed[hub.url].ok
    assert len(hub.received) == 4
    # ... and, with no change, again every TTL/3.
    last = 3 * push.BACKOFF_BASE_S + push.MIN_INTERVAL_S
    assert await run(last + settings.network_report_ttl_s / 3 - 1) == {}
    assert (await run(last + settings.network_report_ttl_s / 3))[hub.url].ok

    shown = (await client.get("/api/v1/network/push-status", headers=admin)).json()["hubs"]
    assert shown[0]["hub_url"] == hub.url
    assert shown[0]["failures"] == 0
    assert shown[0]["last_error"] == "HTTP 503: hub is starting"
    assert shown[0]["last_sequence"] > row.last_sequence


@pytest.mark.usefixtures("located")
async def test_an_unreachable_hub_is_recorded_without_secrets(
    app: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeHub(failures=0) as spare:
        url = spare.url
    secret_url = url.replace("http://", "http://shop:hunter2@")  # closed: nothing listens
    local = settings.model_copy(update={"network_hubs": [secret_url]})
    answers = await push.push_due(sessionmaker=app.state.sessionmaker, settings=local, now=NOW)
    assert not answers[secret_url].ok
    row = await _status(app, secret_url)
    assert row.last_error == "ConnectionError: cannot reach the hub"
    assert "hunter2" not in (row.last_error or "")
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("microfactory")]
    assert any("http://****@127.0.0.1" in m for m in logged), logged
    assert not any("hunter2" in m for m in logged)


@pytest.mark.usefixtures("located")
async def test_the_scheduler_pushes_soon_after_start(app: Any, hub: FakeHub) -> None:
    hub.failures = 0
    scheduler = Scheduler(app.state.sessionmaker, app.state.settings)
    scheduler.start()
    row = None
    try:
        for _ in range(300):  # a bounded wait for the recorded push, not a speed check
            async with app.state.sessionmaker() as session:
                row = await session.get(PushStatus, hub.url)
            if row is not None and row.last_success_at is not None:
                break
            await asyncio.sleep(0.1)
    finally:
        await scheduler.stop()
    assert row is not None
    assert row.last_status == "accepted"
    assert len(hub.received) == 1  # one push at start; nothing changed since


async def test_no_push_until_the_profile_has_a_location(
    app: Any, client: httpx.AsyncClient, hub: FakeHub, settings: Settings, admin: dict[str, str]
) -> None:
    hub.failures = 0
    maker = app.state.sessionmaker

    async def run(seconds: float) -> dict[str, push.HubAnswer]:
        now = NOW + dt.timedelta(seconds=seconds)
        return await push.push_due(sessionmaker=maker, settings=settings, now=now)

    assert await run(0) == {}
    assert await run(push.CHECK_S) == {}
    assert hub.received == []  # a hub would answer 400: nothing is sent
    shown = (await client.get("/api/v1/network/push-status", headers=admin)).json()["hubs"]
    assert shown[0]["last_error"] == push.NOT_READY
    assert shown[0]["failures"] == 0  # not a failure: no backoff once the location is set
    assert shown[0]["last_attempt_at"] is None

    await _set_profile(client, admin)
    answers = await run(2 * push.CHECK_S)  # the next run pushes at once
    assert answers[hub.url].ok
    (received,) = hub.received
    gps = json.loads(_payload(received[1]))["okw"]["location"]["gpsCoordinates"]
    assert gps == {"lat": 51.1, "lon": 3.7}  # rounded to the city, as the profile says
    shown = (await client.get("/api/v1/network/push-status", headers=admin)).json()["hubs"]
    assert (shown[0]["last_status"], shown[0]["last_error"]) == ("accepted", None)
