"""The account page: a member's choices by form, and the shop's channels for admins."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.conftest import UserFactory
from tests.designs.test_design_pages import browser_login

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match is not None
    return match.group(1)


async def test_choices_are_saved_by_form_and_an_admin_adds_a_channel_never_shown_back(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    await make_user("admin", username="page-admin")
    await browser_login(client, "page-admin")
    page = (await client.get("/account/notifications")).text
    assert 'href="/account/notifications"' in page  # the menu links here
    assert "The shop's push channels (admins)" in page
    token = _csrf(page)
    secret = "p4ss-w0rd-of-the-hook"
    bad = await client.post(
        "/account/notifications/channels",
        data={"csrf_token": token, "name": "Shop ntfy", "url": "not a url"},
    )
    assert bad.status_code == 422
    assert 'id="err-channel_url"' in bad.text
    assert "not an apprise URL" in bad.text
    assert 'value="Shop ntfy"' in bad.text  # what was typed stays
    made = await client.post(
        "/account/notifications/channels",
        data={"csrf_token": token, "name": "Shop hook", "url": f"json://u:{secret}@127.0.0.1/h"},
    )
    assert made.status_code == 303
    page = (await client.get("/account/notifications")).text
    assert "Shop hook" in page
    assert secret not in page
    assert "json://u:****@127.0.0.1/h" in page
    channel_id = re.search(r'data-channel-id="(\d+)"', page)
    assert channel_id is not None

    saved = await client.post(
        "/account/notifications",
        data={
            "csrf_token": token,
            "events": ["finished", "bed_clear"],
            "channel_ids": channel_id.group(1),
        },
    )
    assert saved.status_code == 200, saved.text
    assert "Your choices are saved." in saved.text
    prefs = (await client.get("/api/v1/notifications/preferences")).json()
    assert prefs["events"] == ["finished", "bed_clear"]
    assert prefs["email"] is False  # the box was left unticked
    assert prefs["channel_ids"] == [int(channel_id.group(1))]
    refused = await client.post(
        "/account/notifications",
        data={"csrf_token": token, "events": ["started"], "own_url": "json://127.0.0.1/x"},
    )
    assert refused.status_code == 422  # the shop does not allow own URLs
    assert "does not allow" in refused.text

    _, _ = await make_user("member", username="page-member")
    await browser_login(client, "page-member")
    member_page = await client.get("/account/notifications")
    assert member_page.status_code == 200
    assert "The shop's push channels" not in member_page.text
    assert "Shop hook" in member_page.text  # they may pick it
    denied = await client.post(
        "/account/notifications/channels",
        data={"csrf_token": _csrf(member_page.text), "name": "Mine", "url": "json://x/y"},
    )
    assert denied.status_code == 403
