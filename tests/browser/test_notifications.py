"""A member's unread badge goes up live, with no reload, when an operator approves their job."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DemoServer, api_token, login, new_member, release_job

pytestmark = [pytest.mark.browser, pytest.mark.slow]
GCODE = b"G28\nG1 X10 Y10 F3000\nM84\n"


def test_member_sees_the_unread_badge_rise_when_their_job_is_approved(
    page: Any, demo_server: DemoServer
) -> None:
    base = demo_server.url
    admin = api_token(base, "admin", "admin-demo-pass")
    operator = api_token(base, "operator", "operator-demo-pass")
    # The demo member is trusted (their jobs need no approval): a new, untrusted member.
    _, member = new_member(base, admin, "notified", "notified-pass-1")
    machines = httpx.get(base + "/api/v1/machines", headers=member, timeout=10).json()
    manual = next(m for m in machines if m["driver"] == "manual" and m["kind"] == "fdm_printer")
    # Pinned to the manual printer, the job waits in the queue and holds no demo printer.
    job = httpx.post(
        base + "/api/v1/jobs",
        files={"file": ("clip.gcode", GCODE, "text/plain")},
        data={"title": "Badge clip", "machine_id": str(manual["id"])},
        headers=member,
        timeout=10,
    )
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]

    login(page, base, "notified", "notified-pass-1")
    page.goto(base + "/jobs")
    badge = page.locator("[data-unread-badge]")
    expect(badge).to_be_hidden()
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    page.wait_for_function(
        "window.microfactoryStream && window.microfactoryStream.readyState === 1"
    )

    approved = httpx.post(base + f"/api/v1/jobs/{job_id}/approve", headers=operator, timeout=10)
    assert approved.status_code == 200, approved.text
    expect(badge).to_be_visible()
    expect(badge).to_have_text("1")
    expect(badge).to_have_attribute("aria-label", "1 unread message")
    assert page.evaluate("window.__sameDocument === true")  # no reload
    page.screenshot(path="/tmp/notify-crawl-badge.png")

    page.get_by_text("notified", exact=True).click()  # the account menu
    expect(page.get_by_role("link", name="Messages (1 new)")).to_be_visible()
    page.get_by_role("link", name="Messages (1 new)").click()
    expect(page.get_by_role("cell", name="Your job 'Badge clip' was approved")).to_be_visible()
    expect(badge).to_be_hidden()
    page.screenshot(path="/tmp/notify-crawl-messages.png", full_page=True)

    page.goto(base + "/account/notifications")
    expect(page.get_by_role("heading", name="What you hear about")).to_be_visible()
    page.get_by_label("My job started on a machine").uncheck()
    page.get_by_role("button", name="Save my choices").click()
    expect(page.get_by_role("status")).to_have_text("Your choices are saved.")
    expect(page.get_by_label("My job started on a machine")).not_to_be_checked()
    expect(page.get_by_label("My job finished")).to_be_checked()
    page.screenshot(path="/tmp/notify-crawl-account.png", full_page=True)

    cancel = httpx.post(base + f"/api/v1/jobs/{job_id}/cancel", headers=member, timeout=10)
    assert cancel.status_code == 200, cancel.text
    release_job(base, job_id)
