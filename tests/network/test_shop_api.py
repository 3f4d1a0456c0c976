"""The shop side of the network through its API: keys, profile, materials, the capacity report.

Runs on SQLite and PostgreSQL (the `settings` fixture). The signed report is verified with
jwcrypto, a JOSE library independent of the one that signs it (joserfc).
"""

from __future__ import annotations

import datetime as dt
import json
import stat
import uuid
from typing import Any

import httpx
import pytest
import rfc8785
from jwcrypto import jwk as jc_jwk
from jwcrypto import jws as jc_jws
from jwcrypto.common import base64url_decode, base64url_encode
from sqlalchemy import delete

from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role, TokenKind
from microfactory.accounts.schemas import UserCreate
from microfactory.app import create_app
from microfactory.config import Settings
from microfactory.jobs.models import Job, JobState
from microfactory.machines.models import MachineKind
from microfactory.network import identity, routes
from microfactory.network.models import ReportSequence

# Monday 30 November 2026, 08:00 UTC.
NOW = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)
CSRF = "test-csrf-token-value"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test settings with a hub configured (never reached here: no scheduler runs)."""
    return settings.model_copy(update={"network_hubs": ["http://127.0.0.1:9"]})


@pytest.fixture(autouse=True)
def fixed_clock(app: Any) -> None:
    """Every request sees NOW."""
    app.state.clock = lambda: NOW


async def _machine(
    client: httpx.AsyncClient, headers: dict[str, str], name: str, kind: str, **extra: Any
) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/machines",
        json={"name": name, "kind": kind, "driver": "manual", **extra},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def _opening_hours(client: httpx.AsyncClient, operator: dict[str, str]) -> None:
    body = {"intervals": [{"weekday": d, "opens": "09:00", "closes": "17:00"} for d in range(5)]}
    resp = await client.put("/api/v1/opening-hours", json=body, headers=operator)
    assert resp.status_code == 200, resp.text


def _verify_with_jwcrypto(token: str, public: dict[str, Any]) -> bytes:
    """Verify a compact JWS with jwcrypto; return the payload (raises on a bad signature)."""
    header = json.loads(base64url_decode(token.split(".")[0]))
    assert header == {"alg": "Ed25519", "kid": jc_jwk.JWK(**public).thumbprint()}
    signed = jc_jws.JWS()
    signed.deserialize(token)
    signed.verify(jc_jwk.JWK(**public), alg="Ed25519")  # RFC 9864's name, which jwcrypto knows
    return bytes(signed.payload)


async def test_the_shop_key_is_made_once_with_mode_0600_and_published_as_a_jwks(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    path = identity.key_path(settings.data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    jwks = (await client.get("/api/v1/network/keys")).json()  # public: no login
    (key,) = jwks["keys"]
    assert set(key) == {"kty", "crv", "x", "kid", "use", "alg"}
    assert (key["kty"], key["crv"], key["use"], key["alg"]) == ("OKP", "Ed25519", "sig", "Ed25519")
    # The id is the RFC 7638 thumbprint, as an independent library computes it.
    public = {k: key[k] for k in ("kty", "crv", "x")}
    assert key["kid"] == jc_jwk.JWK(**public).thumbprint()
    # The private part never leaves the file.
    assert "d" not in key
    assert "d" in json.loads(path.read_text())
    # A restart reads the same key.
    again = create_app(settings)
    async with again.router.lifespan_context(again):
        transport = httpx.ASGITransport(app=again)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as other:
            assert (await other.get("/api/v1/network/keys")).json() == jwks


async def test_admins_set_the_profile_and_bad_values_get_clear_422s(
    client: httpx.AsyncClient, admin: dict[str, str], operator: dict[str, str]
) -> None:
    shown = (await client.get("/api/v1/network/profile", headers=operator)).json()
    assert shown["name"] == "microfactory"  # the shop_name setting until an admin saves one
    body = {
        "name": "Fablab Gent",
        "url": "http://127.0.0.1:8001",
        "city": "Gent",
        "country": "be",
        "lat": 51.0543,
        "lon": 3.7174,
        "accessType": "Public",
        "contact": "hello@example.org",
        "description": "Printers and a laser",
        "roundToCity": True,
    }
    assert (
        await client.put("/api/v1/network/profile", json=body, headers=operator)
    ).status_code == 403
    resp = await client.put("/api/v1/network/profile", json=body, headers=admin)
    assert resp.status_code == 200, resp.text
    saved = resp.json()
    assert saved["country"] == "BE"
    assert (saved["lat"], saved["lon"], saved["roundToCity"]) == (51.0543, 3.7174, True)
    assert saved["accessType"] == "Public"
    assert saved["shop_id"] == (await client.get("/api/v1/network/keys")).json()["keys"][0]["kid"]

    async def refused(change: dict[str, Any], field: str) -> str:
        resp = await client.put("/api/v1/network/profile", json={**body, **change}, headers=admin)
        assert resp.status_code == 422, resp.text
        (err,) = resp.json()["detail"]
        assert err["loc"][-1] == field or field in err["msg"], err
        return str(err["msg"])

    assert "90" in await refused({"lat": 91}, "lat")
    assert "180" in await refused({"lon": -180.5}, "lon")
    assert "ISO 3166" in await refused({"country": "XX"}, "country")
    assert "Public" in await refused({"accessType": "Open"}, "accessType")
    assert "together" in await refused({"lon": None}, "lat and lon")
    await refused({"lat": "51.0"}, "lat")  # a number, not text
    # Non-finite numbers: JSON has none, but Python's parser reads NaN and Infinity.
    raw = json.dumps(body).replace("51.0543", "NaN")
    resp = await client.put(
        "/api/v1/network/profile",
        content=raw,
        headers={**admin, "Content-Type": "application/json"},
    )
    assert resp.status_code == 422
    # Nothing refused was stored.
    assert (await client.get("/api/v1/network/profile", headers=admin)).json()["lat"] == 51.0543


async def test_the_report_needs_a_login_unless_the_shop_publishes(
    client: httpx.AsyncClient, member: dict[str, str], settings: Settings
) -> None:
    resp = await client.get("/api/v1/network/capacity")
    assert resp.status_code == 401
    assert (await client.get("/api/v1/network/capacity", headers=member)).status_code == 200
    public = create_app(settings.model_copy(update={"network_publish": True}))
    async with public.router.lifespan_context(public):
        transport = httpx.ASGITransport(app=public)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as anon:
            assert (await anon.get("/api/v1/network/capacity")).status_code == 200
            jws = await anon.get("/api/v1/network/capacity?format=jws")
            assert jws.status_code == 200
            assert jws.headers["content-type"].startswith("application/jose")


async def test_materials_are_kept_by_operators_and_read_by_members(
    client: httpx.AsyncClient, operator: dict[str, str], member: dict[str, str]
) -> None:
    printer = await _machine(client, operator, "MK4 #1", "fdm_printer")
    new = {"material": "PETG", "colour": "black", "amount": 750, "unit": "g"}
    assert (await client.post("/api/v1/materials", json=new, headers=member)).status_code == 403
    resp = await client.post(
        "/api/v1/materials", json={**new, "machine_id": printer["id"]}, headers=operator
    )
    assert resp.status_code == 201, resp.text
    stock = resp.json()
    assert (stock["machine_name"], stock["amount"]) == ("MK4 #1", 750)
    listed = (await client.get("/api/v1/materials", headers=member)).json()
    assert [s["material"] for s in listed] == ["PETG"]

    for bad, word in (
        ({**new, "unit": "bananas"}, "unit"),
        ({**new, "amount": -1}, "amount"),
        ({**new, "material": "  "}, "material"),
        ({**new, "machine_id": 999}, "no machine 999"),
    ):
        resp = await client.post("/api/v1/materials", json=bad, headers=operator)
        assert resp.status_code == 422, bad
        assert word in resp.text

    sid = stock["id"]
    resp = await client.patch(
        f"/api/v1/materials/{sid}", json={"amount": 500, "machine_id": None}, headers=operator
    )
    assert resp.status_code == 200
    assert (resp.json()["amount"], resp.json()["machine_id"]) == (500, None)
    assert (
        await client.patch(f"/api/v1/materials/{sid}", json={}, headers=member)
    ).status_code == 403
    # Only machine_id may be null (unloaded); a null unit was a 500 once (schemathesis).
    resp = await client.patch(f"/api/v1/materials/{sid}", json={"unit": None}, headers=operator)
    assert resp.status_code == 422
    assert "unit cannot be null" in resp.text
    assert (await client.delete(f"/api/v1/materials/{sid}", headers=operator)).status_code == 204
    assert (await client.get(f"/api/v1/materials/{sid}", headers=member)).status_code == 404


async def test_the_report_describes_the_registry_and_live_capacity(
    client: httpx.AsyncClient, operator: dict[str, str], admin: dict[str, str]
) -> None:
    await _opening_hours(client, operator)
    mk4 = {
        "build_volume_mm": {"x": 250, "y": 210, "z": 220},
        "capabilities": {
            "make": "Prusa",
            "model": "MK4",
            "nozzle_diameter_mm": 0.4,
            "materials": ["PLA", "PETG"],
        },
    }
    first = await _machine(client, operator, "MK4 #1", "fdm_printer", **mk4)
    await _machine(client, operator, "MK4 #2", "fdm_printer", **mk4)
    laser = await _machine(
        client,
        operator,
        "Laser",
        "laser_cutter",
        build_volume_mm={"x": 600, "y": 400, "z": 50},
        capabilities={
            "make": "Trotec",
            "model": "Speedy 100",
            "laser_power_w": 40,
            "materials": ["plywood", "acrylic"],
        },
    )
    await _machine(
        client,
        operator,
        "Mill",
        "cnc_mill",
        build_volume_mm={"x": 300, "y": 300, "z": 80},
        capabilities={"spindle_max_rpm": 24000, "materials": ["MDF"]},
    )
    await client.post(
        "/api/v1/materials",
        json={"material": "PETG", "colour": "black", "amount": 750, "machine_id": first["id"]},
        headers=operator,
    )
    await client.post(
        "/api/v1/materials",
        json={"material": "TPU", "colour": "red", "amount": 200},
        headers=operator,
    )
    # Laser booked 10:00-12:00 today: 6 of its 8 hours remain.
    resp = await client.post(
        "/api/v1/bookings",
        json={
            "machine_id": laser["id"],
            "start": "2026-11-30T10:00:00Z",
            "end": "2026-11-30T12:00:00Z",
        },
        headers=operator,
    )
    assert resp.status_code == 201, resp.text

    resp = await client.get("/api/v1/network/capacity", headers=admin)
    assert resp.status_code == 200, resp.text
    rep = resp.json()
    jwks = (await client.get("/api/v1/network/keys")).json()["keys"][0]
    assert rep["type"] == "microfactory.capacity/1"
    assert rep["shop_id"] == jwks["kid"]
    assert rep["key"] == {"kty": "OKP", "crv": "Ed25519", "x": jwks["x"]}
    okw = rep["okw"]
    assert okw["facilityStatus"] == "Active"
    assert okw["manufacturingProcesses"] == [
        "https://en.wikipedia.org/wiki/Milling_(machining)",
        "https://en.wikipedia.org/wiki/Fused_filament_fabrication",
        "https://en.wikipedia.org/wiki/Laser_cutting",
    ]
    by_process = {e["process"]: e for e in okw["equipment"]}
    assert len(okw["equipment"]) == 3  # two identical MK4s are one entry, quantity 2
    fdm = by_process["fdm_printing"]
    assert (fdm["make"], fdm["model"], fdm["quantity"], fdm["nozzleSize"]) == (
        "Prusa",
        "MK4",
        2,
        0.4,
    )
    assert fdm["workVolume"] == fdm["buildVolume"] == {"x": 250, "y": 210, "z": 220}
    assert fdm["equipmentType"] == "https://en.wikipedia.org/wiki/3D_printing"
    assert by_process["laser_cutting"]["workVolume"] == {"x": 600, "y": 400, "z": 0}
    assert by_process["laser_cutting"]["laserPower"] == 40
    assert by_process["cnc_milling"]["maximumSpindleSpeed"] == 24000
    assert set(okw["typicalMaterials"]) == {"PLA", "PETG", "plywood", "acrylic", "MDF", "TPU"}

    live = rep["live"]
    assert (live["issuedAt"], live["expiresAt"]) == ("2026-11-30T08:00:00Z", "2026-11-30T08:15:00Z")
    assert live["timezone"] == "UTC"
    free = {(f["date"], f["process"], f["material"]): f["hours"] for f in live["freeHours"]}
    assert free[("2026-11-30", "fdm_printing", "PLA")] == 16  # two printers, 8 h each
    assert free[("2026-11-30", "laser_cutting", "plywood")] == 6
    assert free[("2026-12-05", "laser_cutting", "plywood")] == 0  # Saturday: closed
    assert {f["date"] for f in live["freeHours"]} == {f"2026-12-0{d}" for d in range(1, 7)} | {
        "2026-11-30"
    }
    assert live["queue"] == [
        {"process": "cnc_milling", "depth": 0, "waitHours": 1},
        {"process": "fdm_printing", "depth": 0, "waitHours": 1},
        {"process": "laser_cutting", "depth": 0, "waitHours": 1},
    ]
    assert live["materials"] == [
        {"material": "PETG", "colour": "black", "amount": 750, "unit": "g", "loadedOn": ["MK4 #1"]},
        {"material": "TPU", "colour": "red", "amount": 200, "unit": "g", "loadedOn": []},
    ]


async def test_the_signed_report_verifies_independently_and_a_changed_byte_does_not(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    resp = await client.get("/api/v1/network/capacity?format=jws", headers=member)
    assert resp.status_code == 200
    token = resp.text
    resp2 = await client.get(
        "/api/v1/network/capacity", headers={**member, "Accept": "application/jose"}
    )
    assert resp2.headers["content-type"].startswith("application/jose")
    public = (await client.get("/api/v1/network/keys")).json()["keys"][0]
    public = {k: public[k] for k in ("kty", "crv", "x")}
    payload = _verify_with_jwcrypto(token, public)
    report = json.loads(payload)
    assert payload == rfc8785.dumps(report)  # the payload is the canonical JSON
    # One payload byte changed: the signature no longer verifies.
    head, body, sig = token.split(".")
    raw = bytearray(base64url_decode(body))
    raw[raw.index(b'"sequence":') + 11] ^= 0x01
    forged = ".".join([head, base64url_encode(bytes(raw)), sig])
    with pytest.raises(jc_jws.InvalidJWSSignature):
        _verify_with_jwcrypto(forged, public)


async def test_each_report_has_a_greater_sequence_across_restarts(
    app: Any, client: httpx.AsyncClient, member: dict[str, str], settings: Settings
) -> None:
    clock = {"now": NOW}
    app.state.clock = lambda: clock["now"]

    async def sequence(c: httpx.AsyncClient) -> int:
        resp = await c.get("/api/v1/network/capacity", headers=member)
        return int(resp.json()["live"]["sequence"])

    seen = []
    for _ in range(3):
        seen.append(await sequence(client))
        clock["now"] += dt.timedelta(seconds=routes.REUSE_S)
    # Within REUSE_S an unchanged report is served again, with its sequence (and signature).
    again_soon = await sequence(client)
    assert again_soon == await sequence(client)
    seen.append(again_soon)
    restarted = create_app(settings)
    async with restarted.router.lifespan_context(restarted):
        restarted.state.clock = lambda: clock["now"]
        transport = httpx.ASGITransport(app=restarted)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as other:
            seen.append(await sequence(other))  # a new process: a new report
            # A database restored from an old backup (or made afresh beside the old key):
            # the sequence is at least the Unix time, so it still grows.
            async with restarted.state.sessionmaker() as session:
                await session.execute(delete(ReportSequence))
                await session.commit()
            clock["now"] += dt.timedelta(seconds=routes.REUSE_S)
            seen.append(await sequence(other))
    assert seen == sorted(set(seen))
    assert len(seen) == 6
    assert seen[0] >= int(NOW.timestamp())


async def test_a_change_issues_a_new_report_at_once(
    client: httpx.AsyncClient, member: dict[str, str], operator: dict[str, str]
) -> None:
    first = (await client.get("/api/v1/network/capacity", headers=member)).json()
    await _machine(client, operator, "Laser", "laser_cutter")
    second = (await client.get("/api/v1/network/capacity", headers=member)).json()
    assert second["live"]["sequence"] > first["live"]["sequence"]
    assert [e["process"] for e in second["okw"]["equipment"]] == ["laser_cutting"]


async def test_push_status_is_for_admins(
    client: httpx.AsyncClient, admin: dict[str, str], operator: dict[str, str]
) -> None:
    assert (await client.get("/api/v1/network/push-status", headers=operator)).status_code == 403
    hubs = (await client.get("/api/v1/network/push-status", headers=admin)).json()["hubs"]
    assert [(h["hub_url"], h["failures"], h["last_success_at"]) for h in hubs] == [
        ("http://127.0.0.1:9", 0, None)
    ]


async def _browser(app: Any, client: httpx.AsyncClient, role: Role) -> httpx.AsyncClient:
    async with app.state.sessionmaker() as session:
        user = await account_service.create(
            session=session,
            user_in=UserCreate(username=f"web-{role.value}", password="pass-word-1", role=role),
        )
        token, _ = await account_service.issue_token(session=session, user=user, kind=TokenKind.WEB)
        await session.commit()
    c = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    c.cookies.set("mf_session", token)
    c.cookies.set("mf_csrf", CSRF)
    return c


async def test_admins_edit_the_profile_from_the_network_page(
    app: Any, client: httpx.AsyncClient
) -> None:
    async with await _browser(app, client, Role.ADMIN) as web:
        page = await web.get("/network/admin")
        assert page.status_code == 200
        assert "http://127.0.0.1:9" in page.text  # the push status table
        form = {
            "csrf_token": CSRF,
            "name": "Fablab Gent",
            "url": "",
            "city": "Gent",
            "country": "BE",
            "lat": "51.05",
            "lon": "3.72",
            "access_type": "Public",
            "contact": "",
            "description": "",
            "round_to_city": "on",
        }
        resp = await web.post("/network/admin", data=form)
        assert resp.status_code == 303
        assert "Profile saved" in (await web.get(resp.headers["location"])).text
        refused = await web.post("/network/admin", data={**form, "lat": "north"})
        assert refused.status_code == 422
        assert "lat and lon must be numbers" in refused.text
        assert 'value="north"' in refused.text  # what was typed comes back
        refused = await web.post("/network/admin", data={**form, "lat": "95"})
        assert refused.status_code == 422
        assert "less than or equal to 90" in refused.text
        no_csrf = await web.post("/network/admin", data={**form, "csrf_token": "x"})
        assert no_csrf.status_code == 403
    async with await _browser(app, client, Role.OPERATOR) as web:
        assert (await web.get("/network/admin")).status_code == 403


async def test_operators_keep_materials_from_their_page(
    app: Any, client: httpx.AsyncClient
) -> None:
    async with await _browser(app, client, Role.OPERATOR) as web:
        form = {
            "csrf_token": CSRF,
            "material": "PLA",
            "colour": "white",
            "amount": "1000",
            "unit": "g",
            "machine_id": "",
            "notes": "",
        }
        resp = await web.post("/materials", data=form)
        assert resp.status_code == 303
        page = (await web.get("/materials")).text
        assert "PLA" in page
        assert "1000 g" in page
        refused = await web.post("/materials", data={**form, "amount": "lots"})
        assert refused.status_code == 422
        assert "amount must be a number" in refused.text


async def test_queued_and_running_work_shows_in_free_hours_and_waits(
    app: Any, client: httpx.AsyncClient, operator: dict[str, str], member: dict[str, str]
) -> None:
    await _opening_hours(client, operator)
    printer = await _machine(
        client, operator, "MK4", "fdm_printer", capabilities={"materials": ["PLA"]}
    )
    laser = await _machine(client, operator, "Laser", "laser_cutter")
    owner = (await client.get("/api/v1/users/me", headers=member)).json()["id"]

    def job(**fields: Any) -> Job:
        return Job(
            owner_id=owner,
            title="part",
            file_name="part.gcode",
            stored_name=uuid.uuid4().hex,
            file_sha256="0" * 64,
            file_size=1,
            lines_total=1,
            **fields,
        )

    async with app.state.sessionmaker() as session:
        session.add_all(
            [
                # Queued: a 3 h PLA print, one with no estimate (1 h assumed, as the
                # matcher does) and a 1 h print pinned to the printer.
                job(
                    state=JobState.QUEUED,
                    machine_kind=MachineKind.FDM_PRINTER,
                    material="PLA",
                    analysis={"estimated_time_s": 3 * 3600, "time_profile": [0, 1]},
                ),
                job(state=JobState.QUEUED, machine_kind=MachineKind.FDM_PRINTER, analysis={}),
                job(
                    state=JobState.QUEUED,
                    machine_kind=MachineKind.FDM_PRINTER,
                    requested_machine_id=printer["id"],
                    analysis={"estimated_time_s": 3600},
                ),
                # The laser runs a 4 h job started at 07:00: 3 h are left at 08:00, and the
                # shop opens at 09:00, so it takes the laser's time until 12:00.
                job(
                    state=JobState.RUNNING,
                    machine_kind=MachineKind.LASER_CUTTER,
                    machine_id=laser["id"],
                    started_at=NOW - dt.timedelta(hours=1),
                    analysis={"estimated_time_s": 4 * 3600},
                ),
            ]
        )
        await session.commit()
    rep = (await client.get("/api/v1/network/capacity", headers=member)).json()
    free = {(f["date"], f["process"], f["material"]): f["hours"] for f in rep["live"]["freeHours"]}
    # 8 open hours less 1 h pinned, 3 h and 1 h queued.
    assert free[("2026-11-30", "fdm_printing", "PLA")] == 3
    assert free[("2026-11-30", "laser_cutting", "*")] == 5
    assert free[("2026-12-01", "laser_cutting", "*")] == 8
    assert rep["live"]["queue"] == [
        {"process": "fdm_printing", "depth": 3, "waitHours": 6},  # free from 14:00
        {"process": "laser_cutting", "depth": 0, "waitHours": 4},  # free from 12:00
    ]
