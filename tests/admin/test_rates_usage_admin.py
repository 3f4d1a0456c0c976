"""Rates and plans page, and the shop-wide usage and statements admins see."""

from __future__ import annotations

import datetime as dt
from typing import Any

from microfactory.accounts.models import Role
from microfactory.usage import service as usage_service
from tests.admin.conftest import CSRF, WebClient


async def _usage(app: Any, user_id: int, machine_id: int, hours: float, grams: float) -> None:
    now = dt.datetime.now(dt.UTC)
    async with app.state.sessionmaker() as session:
        await usage_service.append(
            session=session,
            user_id=user_id,
            machine_id=machine_id,
            started_at=now - dt.timedelta(hours=hours),
            ended_at=now,
            active_s=hours * 3600,
            source="manual",
            outcome="good",
            material_kind="PLA",
            material_g=grams,
        )
        await session.commit()


async def test_rates_plans_and_membership_show_on_statements_shop_wide(
    app: Any, web_client: WebClient
) -> None:
    web, _ = await web_client()
    resp = await web.post(
        "/admin/machines/new",
        data={"csrf_token": CSRF, "name": "Printer", "kind": "fdm_printer", "driver": "manual"},
    )
    machine_id = int(resp.headers["location"].split("/")[3].split("?")[0])
    _, ann = await web_client(Role.MEMBER, "ann")
    _, bob = await web_client(Role.MEMBER, "bob")
    await _usage(app, ann.id, machine_id, 3, 100)
    await _usage(app, bob.id, machine_id, 1, 0)
    # Refused in plain words, what was typed kept.
    resp = await web.post(
        "/admin/rates/machine-kinds",
        data={"csrf_token": CSRF, "kind": "fdm_printer", "per_hour": "cheap"},
    )
    assert resp.status_code == 422
    assert "write an amount of money, such as 4.50" in resp.text
    assert 'value="cheap"' in resp.text
    resp = await web.post(
        "/admin/rates/plans",
        data={"csrf_token": CSRF, "name": "Maker", "included_hours": "lots", "monthly_fee": "-1"},
    )
    assert resp.status_code == 422
    assert "write a number of hours, such as 10" in resp.text
    assert "of 0 or more" in resp.text
    # Set: 2.50 an hour, 0.03 a gram, a plan with 2 hours included for Ann.
    ok = [
        ("/admin/rates/machine-kinds", {"kind": "fdm_printer", "per_hour": "2,50"}),
        ("/admin/rates/materials", {"material": "PLA", "per_gram": "0.03"}),
        ("/admin/rates/plans", {"name": "Maker", "included_hours": "2", "monthly_fee": "10"}),
    ]
    for url, data in ok:
        resp = await web.post(url, data={"csrf_token": CSRF, **data})
        assert resp.status_code == 303, (url, resp.text)
    page = await web.get("/admin/rates")
    assert '<td data-rate="fdm_printer">2.50 per hour</td>' in page.text
    assert '<td data-material-rate="PLA">0.0300</td>' in page.text
    plan_id = page.text.split(">Maker</option>", 1)[0].rsplit('value="', 1)[1].split('"', 1)[0]
    resp = await web.post(
        "/admin/rates/memberships",
        data={"csrf_token": CSRF, "user_id": str(ann.id), "plan_id": plan_id},
    )
    assert resp.status_code == 303
    resp = await web.post(
        "/admin/rates/memberships",
        data={"csrf_token": CSRF, "user_id": "99999", "plan_id": plan_id},
    )
    assert resp.status_code == 422
    assert "user 99999 not found" in resp.text
    # Ann: 3 h, 2 included, 1 h at 2.50; 100 g at 0.03; fee 10: 15.50.
    page = await web.get("/statement", params={"member": str(ann.id)})
    assert page.status_code == 200
    assert "<strong data-total>15.50</strong>" in page.text
    assert "Every member in" in page.text
    table = page.text.split('id="all-statements"', 1)[1].split("</table>", 1)[0]
    assert ">ann</a>" in table
    assert ">bob</a>" in table
    assert f"user_id={ann.id}&amp;format=csv" in page.text
    csv = await web.get("/api/v1/statements", params={"user_id": ann.id, "format": "csv"})
    assert csv.status_code == 200
    assert csv.text.strip().splitlines()[-1].endswith(",1550")
    # Usage, shop-wide and filtered.
    usage = await web.get("/usage")
    assert "Shop usage in" in usage.text
    assert "<td>ann</td>" in usage.text
    assert "<td>bob</td>" in usage.text
    usage = await web.get("/usage", params={"member": str(bob.id), "machine": "nonsense"})
    assert "<td>bob</td>" in usage.text
    assert "<td>ann</td>" not in usage.text
    assert f"user_id={bob.id}" in usage.text
    # A member sees their own only, whatever they ask for.
    member_web, _ = await web_client(Role.MEMBER, "carol")
    mine = await member_web.get("/usage", params={"member": str(ann.id)})
    assert "My usage in" in mine.text
    assert "ann" not in mine.text.split('id="mine-heading"', 1)[1]
    own = await member_web.get("/statement", params={"member": str(ann.id)})
    assert "Every member" not in own.text
    assert "<dd>carol</dd>" in own.text
    bad = await web.get("/statement", params={"month": "2026-13"})
    assert bad.status_code == 422


async def test_an_admin_edits_a_plan_and_deletes_it_once_nobody_is_on_it(
    app: Any, web_client: WebClient
) -> None:
    web, _ = await web_client()
    _, ann = await web_client(Role.MEMBER, "ann")
    for name in ("Maker", "Pro"):
        resp = await web.post(
            "/admin/rates/plans",
            data={"csrf_token": CSRF, "name": name, "included_hours": "2", "monthly_fee": "10"},
        )
        assert resp.status_code == 303, resp.text
    page = await web.get("/admin/rates")
    plan_id = page.text.split(">Maker</option>", 1)[0].rsplit('value="', 1)[1].split('"', 1)[0]
    assert "Edit Maker" in page.text
    # A taken name is refused next to the field, what was typed kept, the form left open.
    edit = f"/admin/rates/plans/{plan_id}"
    resp = await web.post(
        edit, data={"csrf_token": CSRF, "name": "Pro", "included_hours": "4", "monthly_fee": "x"}
    )
    assert resp.status_code == 422
    assert "write an amount of money, such as 4.50" in resp.text
    resp = await web.post(
        edit, data={"csrf_token": CSRF, "name": "Pro", "included_hours": "4", "monthly_fee": "12"}
    )
    assert resp.status_code == 422
    assert "another plan has this name" in resp.text
    assert 'value="4"' in resp.text
    assert "<details open>" in resp.text
    resp = await web.post(
        edit,
        data={"csrf_token": CSRF, "name": "Maker+", "included_hours": "4", "monthly_fee": "12.5"},
    )
    assert resp.status_code == 303, resp.text
    page = await web.get(resp.headers["location"])
    assert "Plan saved." in page.text
    assert '<th scope="row">Maker+</th><td>4.0</td><td>12.50</td>' in page.text
    # Not deleted while a member is on it: the admin is told who must move first.
    await web.post(
        "/admin/rates/memberships",
        data={"csrf_token": CSRF, "user_id": str(ann.id), "plan_id": plan_id},
    )
    resp = await web.post(f"{edit}/delete", data={"csrf_token": CSRF})
    assert resp.status_code == 409
    assert "1 member is on the plan &#39;Maker+&#39;" in resp.text
    await web.post(
        "/admin/rates/memberships", data={"csrf_token": CSRF, "user_id": str(ann.id), "plan_id": ""}
    )
    resp = await web.post(f"{edit}/delete", data={"csrf_token": CSRF})
    assert resp.status_code == 303
    page = await web.get(resp.headers["location"])
    assert "Plan deleted." in page.text
    assert "Maker+" not in page.text
    assert (await web.post(f"{edit}/delete", data={"csrf_token": CSRF})).status_code == 404
