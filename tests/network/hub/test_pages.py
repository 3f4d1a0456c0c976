"""The hub's Network page: shops known, pending pins for admins, "where can I make this?"."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import UserFactory
from tests.designs.conftest import CUBE_STL, post_design
from tests.designs.test_design_pages import browser_login
from tests.network.hub.conftest import JOSE, Shop, fdm, laser

Client = httpx.AsyncClient


async def test_admins_approve_waiting_shops_and_members_route_a_job(
    client: Client, app: Any, make_user: UserFactory
) -> None:
    known = Shop(
        "Fablab Gent", lat=51.05, lon=3.72, equipment=[laser("Speedy", 600, 400, ["plywood"])]
    )
    waiting = Shop("Newcomer Lab", lat=50.85, lon=4.35)
    for shop in (known, waiting):
        resp = await client.post("/api/v1/network/reports", content=shop.jws(), headers=JOSE)
        assert resp.json()["status"] == "pending"
    admin, admin_headers = await make_user("admin")
    approve = f"/api/v1/network/hub/pins/{known.shop_id}/approve"
    assert (await client.post(approve, headers=admin_headers)).status_code == 200

    token = await browser_login(client, admin.username)
    page = await client.get("/network")
    assert page.status_code == 200
    assert 'href="/network"' in page.text  # in the nav of a hub
    assert "Fablab Gent" in page.text
    assert "Shops waiting for approval" in page.text
    assert waiting.shop_id in page.text
    assert "/static/vendor/leaflet-1.9.4.js" in page.text

    refused = await client.post(
        f"/network/pins/{waiting.shop_id}/approve", data={"csrf_token": "wrong"}
    )
    assert refused.status_code == 403
    done = await client.post(f"/network/pins/{waiting.shop_id}/approve", data={"csrf_token": token})
    assert done.status_code == 303
    page = await client.get("/network")
    assert "Shops waiting for approval" not in page.text
    assert "Newcomer Lab" in page.text

    answer = await client.post(
        "/network",
        data={
            "csrf_token": token, "process": "laser_cutting", "material": "plywood",
            "x": "300", "y": "200", "z": "4", "lat": "51.0", "lon": "3.7", "radius_km": "100",
            "quantity": "2",
        },
    )  # fmt: skip
    assert answer.status_code == 200
    table = answer.text.split('id="route-shops"')[1].split("</table>")[0]
    assert "Fablab Gent" in table
    assert "Speedy" in table
    excluded = answer.text.split('id="route-excluded"')[1].split("</table>")[0]
    assert "Newcomer Lab" in excluded
    assert "no laser cutter" in excluded

    bad = await client.post(
        "/network", data={"csrf_token": token, "lat": "51", "lon": "3.7", "material": "PLA"}
    )
    assert bad.status_code == 422
    assert "routing needs process, size_mm" in bad.text


async def test_a_design_held_here_is_routed_by_its_content_hash(
    client: Client, open_hub: Any, make_user: UserFactory
) -> None:
    user, member = await make_user("member")
    shop = Shop("Printers", equipment=[fdm("MK4", 250, 210, 220, ["PLA"])])
    assert (
        await client.post("/api/v1/network/reports", content=shop.jws(), headers=JOSE)
    ).status_code == 202
    created = await post_design(
        client, member, [("cube.stl", CUBE_STL)], title="Cube", licence="CC0-1.0"
    )
    assert created.status_code == 201, created.text
    digest = created.json()["content_hash"]
    # The design's page links to the hub's routing form, which it fills in.
    await browser_login(client, user.username)
    design_page = await client.get(f"/designs/{created.json()['id']}")
    assert f'href="/network?design_hash={digest}"' in design_page.text
    form = await client.get("/network", params={"design_hash": digest})
    assert f'value="{digest}"' in form.text
    resp = await client.post(
        "/api/v1/network/route",
        json={"design_hash": digest, "material": "PLA", "near": {"lat": 51.0, "lon": 3.7}},
    )
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert [s["name"] for s in answer["shops"]] == ["Printers"]
    # The size came from the mesh (a 10 mm cube): a 10-minute job on the MK4.
    assert "Prusa MK4 (250×220×210 mm) works PLA" in answer["shops"][0]["reason"]
    assert "job ≈ 10 min for 1" in answer["shops"][0]["reason"]
    missing = await client.post(
        "/api/v1/network/route", json={"design_hash": digest, "near": {"lat": 51.0, "lon": 3.7}}
    )
    assert missing.status_code == 422
    assert "material" in missing.json()["detail"]
