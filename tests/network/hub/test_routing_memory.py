"""Routing on the in-memory index answers exactly as routing on the database's tables.

A random population of shops (some expired, some without the material on hand, a few by the
antimeridian), random jobs at random points; then the copy follows ingest, revocation and a
second process's changes (another engine on the same database), as a hub with several
workers does.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from microfactory.db import make_engine, make_sessionmaker
from microfactory.network.hub import memindex, routing
from microfactory.network.hub.models import HubOffer, HubShopIndex
from microfactory.network.hub.requirements import Requirements
from tests.network.hub.conftest import JOSE, Shop, fdm

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _now_is_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """NOW is taken when each test starts, not at import: a long suite would otherwise hand
    the hub reports that expired while earlier tests ran."""
    monkeypatch.setitem(globals(), "NOW", dt.datetime.now(dt.UTC).replace(microsecond=0))


MODELS = [
    ("fdm_printing", "Prusa MK4", (250, 220, 210), 0.4, None, ["pla", "petg", "abs"]),
    ("fdm_printing", "Prusa XL", (360, 360, 360), 0.6, None, ["pla", "petg"]),
    ("fdm_printing", "Prusa MINI", (180, 180, 180), 0.4, None, ["pla", "petg"]),
    ("laser_cutting", "Trotec Speedy 300", (726, 432, 0), None, 60.0, ["plywood", "acrylic"]),
    ("cnc_milling", "Shapeoko 4", (838, 838, 95), None, None, ["wood", "aluminium"]),
]
ZONES = ["UTC", "Europe/Brussels", "America/New_York", "Pacific/Auckland"]


def population(rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    shops, offers = [], []
    today = NOW.date()
    for i in range(400):
        if i % 20 == 0:  # by the antimeridian
            lat, lon = rng.uniform(-42, -38), rng.choice([rng.uniform(178, 180), -179.5])
        else:
            lat, lon = rng.uniform(49, 53), rng.uniform(2, 8)
        shop_id = f"rnd{i:04d}".ljust(43, "x")
        expires = NOW + dt.timedelta(minutes=rng.choice([-5, 10, 15]))
        shops.append(
            {
                "shop_id": shop_id, "report_cursor": i + 1, "sequence": 1, "name": f"Shop {i}",
                "url": "", "city": "", "country": "", "lat": lat, "lon": lon,
                "issued_at": NOW, "expires_at": expires, "processes": [], "materials": [],
                "summary": {},
            }
        )  # fmt: skip
        first = (today + dt.timedelta(days=rng.choice([-1, 0, 0]))).isoformat()
        for process, machine, dims, nozzle, power, materials in rng.sample(
            MODELS, rng.randint(0, 3)
        ):
            wait = rng.choice([0.0, 1.5, 4.0, 30.0, 200.0])
            for material in rng.sample(materials, rng.randint(1, len(materials))):
                hours = [rng.choice([0, 0.5, 4, 8, 16]) for _ in range(7)]
                offers.append(
                    {
                        "shop_id": shop_id, "shop_name": f"Shop {i}", "process": process,
                        "material": material, "machine": machine,
                        "quantity": rng.randint(1, 3), "dim_a": dims[0], "dim_b": dims[1],
                        "dim_c": dims[2], "nozzle_mm": nozzle, "laser_w": power, "lat": lat,
                        "lon": lon, "expires_at": expires, "wait_h": wait,
                        "on_hand": rng.choice([None, True, False]), "free_from": first,
                        "free_hours": ",".join(f"{h:g}" for h in hours),
                        "timezone": rng.choice(ZONES),
                    }
                )  # fmt: skip
    return shops, offers


def jobs(rng: random.Random, n: int) -> list[Requirements]:
    found = []
    for _ in range(n):
        process, _, _, _, _, materials = rng.choice(MODELS)
        if rng.random() < 0.15:
            lat, lon = rng.uniform(-42, -38), rng.choice([179.8, -179.9])
        else:
            lat, lon = rng.uniform(49.5, 52.5), rng.uniform(2.5, 7.5)
        size = rng.choice([(40.0, 20.0, 20.0), (200.0, 200.0, 200.0), (300.0, 300.0, 300.0)])
        found.append(
            Requirements(
                processes=(process,),
                material=rng.choice([*materials, "PETG", "nylon"]),
                size=size,
                quantity=rng.choice([1, 1, 5, 40]),
                deadline=rng.choice([None, None, NOW + dt.timedelta(days=2)]),
                lat=lat,
                lon=lon,
                radius_km=rng.choice([10.0, 50.0, 150.0]),
            )
        )
    return found


async def compare(sessionmaker: Any, reqs: list[Requirements]) -> int:
    """Route each job both ways; return how many answers listed shops (both must agree)."""
    listed = 0
    for req in reqs:
        async with sessionmaker() as session:
            fast = await routing.route(session=session, req=req, now=NOW)
        async with sessionmaker() as session:
            plain = await routing.route(session=session, req=req, now=NOW, in_memory=False)
        assert fast.model_dump() == plain.model_dump(), req
        listed += bool(plain.shops)
    return listed


async def test_the_in_memory_index_answers_as_the_tables_do(
    app: Any, open_hub: Any, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    rng = random.Random(2026)
    shops, offers = population(rng)
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(insert(HubShopIndex), shops)
        await session.execute(insert(HubOffer), offers)
    reqs = jobs(rng, 40)
    assert await compare(app.state.sessionmaker, reqs) > 5  # not only empty answers

    # Another process of the same hub (its own engine): a new shop and a revocation there
    # reach this process's copy through the version and the log, without a full reload.
    copy = await _copy(app)
    loads = copy.loads
    other = make_engine(app.state.settings.async_database_url)
    try:
        near = Shop("New in Brussels", lat=50.85, lon=4.35,
                    equipment=[fdm("XL", 360, 360, 360, ["PETG"])])  # fmt: skip
        resp = await client.post("/api/v1/network/reports", content=near.jws(now=NOW), headers=JOSE)
        assert resp.status_code == 202, resp.text
        async with make_sessionmaker(other)() as session:
            elsewhere = await memindex.current(session)  # a second copy, in "another process"
        assert near.shop_id in elsewhere.shops
        job = Requirements(
            processes=("fdm_printing",), material="PETG", size=(300.0, 300.0, 30.0),
            quantity=1, deadline=None, lat=50.85, lon=4.35, radius_km=10.0,
        )  # fmt: skip
        async with make_sessionmaker(other)() as session:
            answer = await routing.route(session=session, req=job, now=NOW)
        assert "New in Brussels" in [s.name for s in answer.shops]
        resp = await client.post(f"/api/v1/network/hub/pins/{near.shop_id}/revoke", headers=admin)
        assert resp.status_code == 200, resp.text
        async with make_sessionmaker(other)() as session:
            answer = await routing.route(session=session, req=job, now=NOW)
        assert "New in Brussels" not in [s.name for s in answer.shops]
        assert near.shop_id not in elsewhere.shops
        assert elsewhere.loads == 1  # loaded once, then kept current from the log
    finally:
        await other.dispose()
    await compare(app.state.sessionmaker, [job, *reqs[:10]])
    assert copy.loads == loads


async def _copy(app: Any) -> memindex.MemIndex:
    async with app.state.sessionmaker() as session:
        return await memindex.current(session)
