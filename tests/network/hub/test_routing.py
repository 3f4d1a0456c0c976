"""Routing: the right shop for the job, soonest and near, and the reason for every other."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from tests.network.hub.conftest import JOSE, Shop, fdm, laser

Client = httpx.AsyncClient
BRUSSELS = {"lat": 50.85, "lon": 4.35}


async def publish(client: Client, *shops: Shop, **kwargs: Any) -> None:
    for shop in shops:
        resp = await client.post(
            "/api/v1/network/reports", content=shop.jws(**kwargs), headers=JOSE
        )
        assert resp.status_code == 202, resp.text


async def route(client: Client, **body: Any) -> dict[str, Any]:
    body.setdefault("near", BRUSSELS)
    body.setdefault("radius_km", 100)
    resp = await client.post("/api/v1/network/route", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def reasons(answer: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["reason"] for e in answer["excluded"]}


@pytest.fixture
def shops() -> dict[str, Shop]:
    return {
        # Gent, ~50 km from Brussels: small printers only.
        "A": Shop(
            "A Gent", lat=51.05, lon=3.72, equipment=[fdm("MK4", 250, 210, 220, ["PLA", "PETG"])]
        ),
        # Brussels: a laser cutter and a small printer.
        "B": Shop(
            "B Brussels",
            lat=50.85,
            lon=4.36,
            equipment=[
                laser("Speedy 300", 600, 400, ["plywood", "acrylic"]),
                fdm("MINI", 180, 180, 180, ["PLA"]),
            ],
        ),
        # Antwerp, ~42 km: a large-format printer.
        "C": Shop("C Antwerp", lat=51.22, lon=4.40, equipment=[fdm("XL", 360, 360, 360, ["PETG"])]),
        # Liège, ~90 km: another laser cutter.
        "D": Shop(
            "D Liège", lat=50.63, lon=5.57, equipment=[laser("Epilog", 800, 500, ["plywood"])]
        ),
    }


async def test_a_laser_job_near_b_goes_to_b(
    client: Client, open_hub: Any, shops: dict[str, Shop]
) -> None:
    await publish(client, *shops.values())
    answer = await route(
        client, process="laser_cutting", material="plywood", size_mm={"x": 300, "y": 200, "z": 4}
    )
    assert [s["name"] for s in answer["shops"]] == ["B Brussels", "D Liège"]
    best = answer["shops"][0]
    assert best["machine"] == "Trotec Speedy 300"
    assert best["distance_km"] < 2
    assert "Speedy 300 (600×400 mm) works plywood" in best["reason"]
    assert "plywood" in best["reason"]
    start = dt.datetime.fromisoformat(best["earliest_start"])
    finish = dt.datetime.fromisoformat(best["earliest_finish"])
    assert finish > start
    why = reasons(answer)
    assert why["A Gent"].startswith("no laser cutter")
    assert why["C Antwerp"].startswith("no laser cutter")


async def test_a_part_too_large_for_a_goes_elsewhere(
    client: Client, open_hub: Any, shops: dict[str, Shop]
) -> None:
    await publish(client, *shops.values())
    answer = await route(
        client,
        process="fdm_printing",
        material="PETG",
        size_mm={"x": 300, "y": 200, "z": 150},
        near={"lat": 51.05, "lon": 3.72},  # at A's door
    )
    assert [s["name"] for s in answer["shops"]] == ["C Antwerp"]
    assert answer["shops"][0]["machine"] == "Prusa XL"
    why = reasons(answer)
    assert why["A Gent"].startswith("no machine large enough")
    assert "300×200×150" in why["A Gent"]
    assert "250×220×210" in why["A Gent"]
    assert why["B Brussels"].startswith("no material")  # its printer works PLA only
    # A part that fits A in another orientation (220 tall laid on its side) stays with A.
    turned = await route(
        client,
        process="fdm_printing",
        material="petg",
        size_mm={"x": 100, "y": 240, "z": 40},
        near={"lat": 51.05, "lon": 3.72},
    )
    assert turned["shops"][0]["name"] == "A Gent"


async def test_a_full_week_at_b_moves_b_out_with_that_reason(
    client: Client, open_hub: Any, shops: dict[str, Shop]
) -> None:
    b = shops["B"]
    await publish(client, *shops.values())
    job = {
        "process": "laser_cutting",
        "material": "plywood",
        "size_mm": {"x": 300, "y": 200, "z": 4},
    }
    assert (await route(client, **job))["shops"][0]["name"] == "B Brussels"
    # B's bookings fill the week: no free laser hours left for plywood.
    b.hours[("laser_cutting", "plywood")] = [0.0] * 7
    await publish(client, b)
    answer = await route(client, **job)
    assert [s["name"] for s in answer["shops"]] == ["D Liège"]
    assert reasons(answer)["B Brussels"].startswith("no free hours for plywood in the 7 days")

    # Free only from the fourth day: B moves down behind D instead of out.
    b.hours[("laser_cutting", "plywood")] = [0.0, 0.0, 0.0, 8.0, 8.0, 8.0, 8.0]
    await publish(client, b)
    answer = await route(client, **job)
    assert [s["name"] for s in answer["shops"]] == ["D Liège", "B Brussels"]
    start = dt.datetime.fromisoformat(answer["shops"][1]["earliest_start"])
    assert start.date() == dt.datetime.now(dt.UTC).date() + dt.timedelta(days=3)

    # A long queue at B does the same.
    b.hours[("laser_cutting", "plywood")] = [8.0] * 7
    b.waits["laser_cutting"] = 30.0
    await publish(client, b)
    answer = await route(client, **job)
    assert [s["name"] for s in answer["shops"]] == ["D Liège", "B Brussels"]
    assert "queue wait 30.0 h" in answer["shops"][1]["reason"]


async def test_the_radius_leaves_far_shops_out_as_too_far(
    client: Client, open_hub: Any, shops: dict[str, Shop]
) -> None:
    await publish(client, *shops.values())
    job = {
        "process": "laser_cutting",
        "material": "plywood",
        "size_mm": {"x": 700, "y": 450, "z": 4},
    }
    wide = await route(client, **job, radius_km=150)
    assert [s["name"] for s in wide["shops"]] == ["D Liège"]
    narrow = await route(client, **job, radius_km=50)
    assert narrow["shops"] == []
    why = reasons(narrow)
    assert why["D Liège"].startswith("too far: 8")
    assert "beyond the 50 km" in why["D Liège"]
    assert why["B Brussels"].startswith("no machine large enough")


async def test_a_deadline_leaves_out_shops_that_finish_later(
    client: Client, open_hub: Any, shops: dict[str, Shop]
) -> None:
    c = shops["C"]
    c.waits["fdm_printing"] = 20.0
    await publish(client, *shops.values())
    job = {"process": "fdm_printing", "material": "PETG", "size_mm": {"x": 300, "y": 300, "z": 50}}
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=6)).isoformat()
    answer = await route(client, **job, deadline=soon)
    assert answer["shops"] == []
    assert reasons(answer)["C Antwerp"].startswith("no free hours before the deadline")
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=5)).isoformat()
    assert [s["name"] for s in (await route(client, **job, deadline=later))["shops"]] == [
        "C Antwerp"
    ]


async def test_expired_reports_are_excluded_with_that_reason(
    client: Client, open_hub: Any, shops: dict[str, Shop]
) -> None:
    await publish(client, shops["A"], shops["C"])
    await publish(client, shops["B"], ttl_s=60)
    open_hub.state.clock = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
    answer = await route(
        client, process="fdm_printing", material="PLA", size_mm={"x": 50, "y": 50, "z": 50}
    )
    assert [s["name"] for s in answer["shops"]] == ["A Gent"]
    assert reasons(answer)["B Brussels"].startswith("report expired")


async def test_an_okh_manifest_gives_the_fields(
    client: Client, open_hub: Any, shops: dict[str, Shop]
) -> None:
    await publish(client, *shops.values())
    manifest = {
        "okhv": "OKH-LOSHv1.0",
        "name": "L-bracket",
        "part": [
            {
                "name": "bracket",
                "tsdc": "3DP",
                "material": "PLA",
                "outer-dimensions": "cube(size=[40,20,20])",
            }
        ],
    }
    answer = await route(client, okh=manifest, quantity=4)
    assert {s["name"] for s in answer["shops"]} == {"A Gent", "B Brussels"}
    assert "for 4" in answer["shops"][0]["reason"]
    resp = await client.post(
        "/api/v1/network/route", json={"okh": {"name": "nothing"}, "near": BRUSSELS}
    )
    assert resp.status_code == 422
    assert "process, material, size_mm" in resp.json()["detail"]
    unknown = await client.post(
        "/api/v1/network/route", json={"design_hash": "a" * 64, "near": BRUSSELS}
    )
    assert unknown.status_code == 404


async def test_bad_route_requests_get_422(client: Client, open_hub: Any) -> None:
    for body in (
        {
            "process": "welding",
            "material": "PLA",
            "size_mm": {"x": 1, "y": 1, "z": 1},
            "near": BRUSSELS,
        },
        {"process": "fdm_printing", "material": "PLA", "size_mm": {"x": 1, "y": 1, "z": 1}},
        {
            "process": "fdm_printing",
            "material": "PLA",
            "size_mm": {"x": 1, "y": 1, "z": 1},
            "near": {"lat": 91, "lon": 0},
        },
        {
            "process": "fdm_printing",
            "material": "PLA",
            "size_mm": {"x": -1, "y": 1, "z": 1},
            "near": BRUSSELS,
        },
        {
            "process": "fdm_printing",
            "material": "PLA",
            "size_mm": {"x": 1, "y": 1, "z": 1},
            "near": BRUSSELS,
            "deadline": "2026-12-02T10:00:00",
        },
    ):
        resp = await client.post("/api/v1/network/route", json=body)
        assert resp.status_code == 422, body


async def test_the_box_prefilter_works_across_the_antimeridian(
    client: Client, open_hub: Any
) -> None:
    fiji = Shop("Suva", lat=-18.0, lon=179.9)
    await publish(client, fiji)
    answer = await route(
        client,
        process="fdm_printing",
        material="PLA",
        size_mm={"x": 10, "y": 10, "z": 10},
        near={"lat": -18.0, "lon": -179.9},
        radius_km=50,
    )
    assert [s["name"] for s in answer["shops"]] == ["Suva"]
    assert answer["shops"][0]["distance_km"] == pytest.approx(21.1, abs=0.2)


async def test_a_job_of_over_a_year_is_excluded_not_a_server_error(
    client: Client, open_hub: Any
) -> None:
    giant = Shop("Giant", lat=50.85, lon=4.35, equipment=[fdm("BigRep", 1000, 1000, 1000, ["PLA"])])
    slow = Shop("Slow", lat=50.86, lon=4.35, waits={"fdm_printing": 1e300})
    await publish(client, giant, slow)
    answer = await route(
        client,
        process="fdm_printing",
        material="PLA",
        size_mm={"x": 1000, "y": 1000, "z": 1000},
        quantity=100_000,
    )
    assert answer["shops"] == []
    assert "over a year" in reasons(answer)["Giant"]
    # An absurd queue wait is taken (capped): it ends after the week reported.
    small = await route(
        client, process="fdm_printing", material="PLA", size_mm={"x": 9, "y": 9, "z": 9}
    )
    assert [s["name"] for s in small["shops"]] == ["Giant"]
    assert reasons(small)["Slow"].startswith("no free hours for PLA in the 7 days")
