"""Usage reports and statements from the append-only log, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import httpx
import pytest

from microfactory.usage import service as usage_service
from microfactory.usage.models import UsageRecord
from tests.bookings.conftest import Clock, paris
from tests.conftest import UserFactory


async def _log(app: Any, **kw: Any) -> int:
    async with app.state.sessionmaker() as session:
        record = await usage_service.append(session=session, outcome="finished", **kw)
        await session.commit()
        return record.id


@pytest.fixture
async def logged(
    app: Any,
    make_user: UserFactory,
    machine: dict[str, Any],
    client: httpx.AsyncClient,
    operator: dict[str, str],
) -> dict[str, Any]:
    """Two members' usage on one machine in December 2026 (and one record in November)."""
    await client.patch(
        f"/api/v1/machines/{machine['id']}/booking-profile", json={"power_w": 100}, headers=operator
    )
    alice, alice_h = await make_user("member")
    bob, bob_h = await make_user("member")
    day = paris(2026, 12, 2, 10)
    for user, hours, grams in ((alice, 3.0, 100.0), (bob, 1.5, None)):
        await _log(
            app,
            user_id=user.id,
            machine_id=machine["id"],
            source="job",
            started_at=day,
            ended_at=day + dt.timedelta(hours=hours),
            active_s=hours * 3600,
            material_kind="PLA" if grams else None,
            material_g=grams,
        )
    november = paris(2026, 11, 30, 10)
    await _log(
        app,
        user_id=alice.id,
        machine_id=machine["id"],
        source="job",
        started_at=november,
        ended_at=november + dt.timedelta(hours=1),
        active_s=3600,
    )
    return {"alice": alice, "alice_h": alice_h, "bob": bob, "bob_h": bob_h}


async def test_members_see_their_own_usage_and_operators_everyones(
    client: httpx.AsyncClient, clock: Clock, logged: dict[str, Any], operator: dict[str, str]
) -> None:
    mine = (
        await client.get("/api/v1/usage", params={"month": "2026-12"}, headers=logged["alice_h"])
    ).json()
    assert [r["user_id"] for r in mine] == [logged["alice"].id]
    assert mine[0]["energy_wh"] == 300.0  # 100 W for 3 h
    other = await client.get(
        "/api/v1/usage", params={"user_id": logged["bob"].id}, headers=logged["alice_h"]
    )
    assert other.status_code == 404
    everyone = (
        await client.get("/api/v1/usage", params={"month": "2026-12"}, headers=operator)
    ).json()
    assert len(everyone) == 2
    summary = (
        await client.get(
            "/api/v1/usage", params={"month": "2026-12", "group_by": "member"}, headers=operator
        )
    ).json()
    assert [(r["username"], r["active_h"]) for r in summary] == [
        (logged["alice"].username, 3.0),
        (logged["bob"].username, 1.5),
    ]
    resp = await client.get(
        "/api/v1/usage",
        params={"month": "2026-12", "group_by": "member_machine", "format": "csv"},
        headers=operator,
    )
    assert resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert len(rows) == 2
    assert rows[0]["machine_name"] == "Printer A"
    assert rows[0]["material_g"] == "100.0"
    # The default period is the current local month of the clock (December 2026).
    default = (await client.get("/api/v1/usage", headers=logged["alice_h"])).json()
    assert len(default) == 1
    november = (
        await client.get("/api/v1/usage", params={"month": "2026-11"}, headers=logged["alice_h"])
    ).json()
    assert len(november) == 1


async def test_utilisation_is_a_share_of_opening_hours(
    client: httpx.AsyncClient,
    clock: Clock,
    logged: dict[str, Any],
    operator: dict[str, str],
    machine: dict[str, Any],
) -> None:
    week = [{"weekday": d, "opens": "09:00", "closes": "18:00"} for d in range(7)]
    await client.put("/api/v1/opening-hours", json={"intervals": week}, headers=operator)
    rows = (
        await client.get(
            "/api/v1/usage/utilisation",
            params={"first_day": "2026-12-01", "days": 3},
            headers=logged["bob_h"],
        )
    ).json()
    by_day = {r["day"]: r for r in rows if r["machine_id"] == machine["id"]}
    assert by_day["2026-12-02"]["used_h"] == 4.5
    assert by_day["2026-12-02"]["open_h"] == 9.0
    assert by_day["2026-12-02"]["share"] == 0.5
    assert by_day["2026-12-01"]["share"] == 0.0


async def test_corrections_are_compensating_entries(
    app: Any,
    client: httpx.AsyncClient,
    clock: Clock,
    logged: dict[str, Any],
    operator: dict[str, str],
) -> None:
    record = (
        await client.get("/api/v1/usage", params={"month": "2026-12"}, headers=logged["alice_h"])
    ).json()[0]
    refused = await client.post(
        f"/api/v1/usage/{record['id']}/corrections",
        json={"active_s": -3600, "note": "printer idle"},
        headers=logged["alice_h"],
    )
    assert refused.status_code == 403
    resp = await client.post(
        f"/api/v1/usage/{record['id']}/corrections",
        json={"active_s": -3600, "material_g": -20, "note": "printer idle for an hour"},
        headers=operator,
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["corrects_id"] == record["id"]
    summary = (
        await client.get(
            "/api/v1/usage",
            params={"month": "2026-12", "group_by": "member"},
            headers=logged["alice_h"],
        )
    ).json()
    assert summary[0]["active_h"] == 2.0
    assert summary[0]["material_g"] == 80.0
    # The app itself refuses to change or delete a record.
    async with app.state.sessionmaker() as session:
        original = await session.get(UsageRecord, record["id"])
        assert original is not None
        original.active_s = 1.0
        with pytest.raises(RuntimeError, match="append-only"):
            await session.flush()


async def test_monthly_statement_applies_plan_credits_first(
    client: httpx.AsyncClient, clock: Clock, logged: dict[str, Any], operator: dict[str, str]
) -> None:
    await client.put(
        "/api/v1/rates/machine-kinds/fdm_printer", json={"cents_per_hour": 200}, headers=operator
    )
    await client.put("/api/v1/rates/materials/PLA", json={"cents_per_kg": 2500}, headers=operator)
    plan = await client.post(
        "/api/v1/plans",
        json={"name": "Maker", "included_hours_per_month": 2, "monthly_fee_cents": 1500},
        headers=operator,
    )
    assert plan.status_code == 201
    assert (
        await client.put(
            f"/api/v1/plans/members/{logged['alice'].id}",
            json={"plan_id": plan.json()["id"]},
            headers=operator,
        )
    ).status_code == 204
    st = (
        await client.get(
            "/api/v1/statements", params={"month": "2026-12"}, headers=logged["alice_h"]
        )
    ).json()
    assert st["plan"] == "Maker"
    assert st["used_hours"] == 3.0
    assert st["credited_hours"] == 2.0
    assert st["billed_hours"] == 1.0
    assert st["machine_cents"] == 200  # 1 h at 2.00
    assert st["material_cents"] == 250  # 100 g at 25.00/kg
    assert st["total_cents"] == 1500 + 200 + 250
    # Members cannot read another member's statement; operators can.
    assert (
        await client.get(
            "/api/v1/statements", params={"user_id": logged["bob"].id}, headers=logged["alice_h"]
        )
    ).status_code == 404
    bob = (
        await client.get(
            "/api/v1/statements",
            params={"user_id": logged["bob"].id, "month": "2026-12"},
            headers=operator,
        )
    ).json()
    assert bob["machine_cents"] == 300  # 1.5 h, no plan
    csv_resp = await client.get(
        "/api/v1/statements",
        params={"month": "2026-12", "format": "csv"},
        headers=logged["alice_h"],
    )
    rows = list(csv.reader(io.StringIO(csv_resp.text)))
    assert rows[0][0] == "record_id"
    assert rows[-1][0] == "total"
    assert rows[-1][-1] == "1950"


async def test_a_plan_is_changed_and_deleted_only_once_nobody_is_on_it(
    client: httpx.AsyncClient, clock: Clock, logged: dict[str, Any], operator: dict[str, str]
) -> None:
    body = {"name": "Maker", "included_hours_per_month": 2, "monthly_fee_cents": 1500}
    maker = (await client.post("/api/v1/plans", json=body, headers=operator)).json()
    await client.post("/api/v1/plans", json={**body, "name": "Pro"}, headers=operator)
    url = f"/api/v1/plans/{maker['id']}"
    # Members cannot change plans; names stay unique; an unknown plan is a 404.
    changed = {**body, "included_hours_per_month": 4, "monthly_fee_cents": 1250}
    assert (await client.put(url, json=changed, headers=logged["alice_h"])).status_code == 403
    taken = await client.put(url, json={**body, "name": "Pro"}, headers=operator)
    assert taken.status_code == 409
    assert "a plan named 'Pro' already exists" in taken.text
    assert (await client.put("/api/v1/plans/999", json=body, headers=operator)).status_code == 404
    ok = await client.put(url, json=changed, headers=operator)
    assert ok.status_code == 200, ok.text
    assert ok.json()["included_hours_per_month"] == 4
    # Alice's statement uses the plan as it is now.
    member = f"/api/v1/plans/members/{logged['alice'].id}"
    await client.put(member, json={"plan_id": maker["id"]}, headers=operator)
    st = await client.get("/api/v1/statements", headers=logged["alice_h"])
    assert st.json()["plan"] == "Maker"
    assert st.json()["plan_fee_cents"] == 1250
    # Not deleted while Alice is on it; deleted once she is on none.
    refused = await client.delete(url, headers=operator)
    assert refused.status_code == 409
    assert "1 member is on the plan 'Maker'" in refused.text
    await client.put(member, json={"plan_id": None}, headers=operator)
    assert (await client.delete(url, headers=operator)).status_code == 204
    names = [p["name"] for p in (await client.get("/api/v1/plans", headers=operator)).json()]
    assert names == ["Pro"]
