"""Pages a member watches update by themselves, never reloaded: the machine grid and a
machine's page when an admin adds, renames and deletes a machine; the bookings list and the
unread badge when an operator books for them and cancels; the usage page when their job
finishes, and the statement and messages pages open beside it."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    DemoServer,
    api_token,
    delete_machine_named,
    login,
    new_member,
    release_job,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
GCODE = b"G28\nG1 X10 Y10 F3000\nM84\n"
NAME = "Live bench"


def _watch(page: Any, path: str) -> None:
    """Open a page and wait until it follows the event stream; mark the document."""
    page.goto(path)
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    page.wait_for_function(
        "window.microfactoryStream && window.microfactoryStream.readyState === 1"
    )


def _not_reloaded(page: Any) -> None:
    assert page.evaluate("window.__sameDocument === true")


def test_grid_bookings_badge_and_usage_follow_the_shop_live(
    page: Any, demo_server: DemoServer
) -> None:
    base = demo_server.url
    admin = api_token(base, "admin", "admin-demo-pass")
    operator = api_token(base, "operator", "operator-demo-pass")
    watcher_id, member = new_member(base, admin, "watcher", "watcher-pass-1")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.context.on("page", lambda tab: tab.on("pageerror", lambda exc: errors.append(str(exc))))
    login(page, base, "watcher", "watcher-pass-1")
    page.wait_for_url("**/machines")
    job_id = None
    try:
        # -- the grid: a machine added, renamed, then deleted by an admin ---------------------
        _watch(page, base + "/machines")
        body = {"name": NAME, "kind": "other", "driver": "manual"}
        added = httpx.post(base + "/api/v1/machines", json=body, headers=admin, timeout=10)
        assert added.status_code == 201, added.text
        url = f"{base}/api/v1/machines/{added.json()['id']}"
        card = page.locator("article.machine", has_text=NAME)
        expect(card).to_be_visible()
        expect(page.locator("[data-field=machine-count]")).to_have_text("6 machines")
        renamed = httpx.patch(url, json={"name": NAME + " 2"}, headers=admin, timeout=10)
        assert renamed.status_code == 200, renamed.text
        expect(card.locator("[data-field=name]")).to_have_text(NAME + " 2")
        # Its own page, open beside the grid, hears of the next rename and of the deletion.
        machine_page = page.context.new_page()
        _watch(machine_page, f"{base}/machines/{added.json()['id']}")
        # The grid's refresh after that rename is answered late, after the deletion: the
        # stale answer (it still has the card) must not bring the deleted machine back.
        held: list[Any] = []

        def hold(route: Any) -> None:
            if route.request.resource_type != "fetch" or len(held) == 2:
                route.continue_()
                return
            held.append((route, route.fetch()))

        page.route(base + "/machines", hold)
        assert httpx.patch(url, json={"name": NAME + " 3"}, headers=admin, timeout=10).is_success
        expect(machine_page.get_by_role("heading", level=1)).to_have_text(NAME + " 3")
        expect(card.locator("[data-field=name]")).to_have_text(NAME + " 3")
        while not held:  # the grid asked for its new content (answered before the deletion)
            page.wait_for_timeout(50)
        assert httpx.delete(url, headers=admin, timeout=10).status_code == 204
        expect(card).to_have_count(0)
        expect(machine_page.get_by_text("This machine was removed by an admin.")).to_be_visible()
        page.evaluate("document.querySelector('#main h1').dataset.stale = '1'")
        route, stale = held[0]
        held.append(None)  # the refreshes after it are answered at once
        route.fulfill(response=stale)
        page.wait_for_function("!document.querySelector('[data-stale]')")  # it was swapped in
        assert card.count() == 0  # at once: not even until the next refresh
        assert page.locator("article.machine", has_text=NAME + " 2").count() == 0
        expect(page.locator("[data-field=machine-count]")).to_have_text("5 machines")
        _not_reloaded(page)
        _not_reloaded(machine_page)
        machine_page.close()
        page.unroute(base + "/machines")

        # -- bookings: an operator books for the member, then cancels: list and badge move ---
        _watch(page, base + "/bookings")
        badge = page.locator("[data-unread-badge]")
        expect(badge).to_be_hidden()
        machines = httpx.get(base + "/api/v1/machines", headers=admin, timeout=10).json()
        ender = next(m for m in machines if m["name"] == "Ender 3 (manual)")
        day = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).date().isoformat()
        booking = httpx.post(
            base + "/api/v1/bookings",
            json={"machine_id": ender["id"], "start": f"{day}T15:00:00Z",
                  "end": f"{day}T16:00:00Z", "user_id": watcher_id},
            headers=operator,
            timeout=10,
        )  # fmt: skip
        assert booking.status_code == 201, booking.text
        row = page.locator("#my-bookings tbody tr", has_text="Ender 3 (manual)")
        expect(row).to_be_visible()
        expect(badge).to_have_text("1")  # "Booked: ..." (a booking message, no job event)
        expect(page.locator("#booking-messages")).to_contain_text("Booked: Ender 3 (manual)")
        cancelled = httpx.delete(
            f"{base}/api/v1/bookings/{booking.json()['id']}",
            params={"reason": "the shop needs it"},
            headers=operator,
            timeout=10,
        )
        assert cancelled.status_code == 200, cancelled.text
        expect(badge).to_have_text("2")
        expect(page.locator("#booking-messages")).to_contain_text("Cancelled by an operator")
        expect(row).to_have_count(0)  # the list shows the bookings still to come
        _not_reloaded(page)

        # -- usage, statement, messages: the member's job finishes on a demo printer ---------
        _watch(page, base + "/usage")
        statement, messages = page.context.new_page(), page.context.new_page()
        _watch(statement, base + "/statement")
        _watch(messages, base + "/notifications")
        job = httpx.post(
            base + "/api/v1/jobs",
            files={"file": ("live.gcode", GCODE, "text/plain")},
            data={"title": "Live usage", "machine_kind": "fdm_printer"},
            headers=member,
            timeout=10,
        )
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        approved = httpx.post(f"{base}/api/v1/jobs/{job_id}/approve", headers=operator, timeout=10)
        assert approved.status_code == 200, approved.text
        deadline = time.monotonic() + 120  # a safety net: the queue may wait for a printer
        state = ""
        while state != "finished" and time.monotonic() < deadline:
            state = httpx.get(f"{base}/api/v1/jobs/{job_id}", headers=member, timeout=10).json()[
                "state"
            ]
            assert state not in ("failed", "cancelled"), state
            time.sleep(0.2)
        assert state == "finished"
        log = page.locator("#usage-log")
        expect(log.get_by_role("link", name=f"#{job_id}")).to_be_visible()
        expect(log.locator("tr", has_text=f"#{job_id}")).to_contain_text("finished")
        lines = statement.locator("#statement-lines tbody")
        expect(lines).not_to_contain_text("No usage this month.")
        expect(lines.locator("tr")).to_have_count(1)
        expect(messages.get_by_role("cell", name="Your job 'Live usage' finished")).to_be_visible()
        expect(messages.locator("[data-unread-badge]")).to_be_hidden()  # read on that page
        for watched in (page, statement, messages):
            _not_reloaded(watched)
        assert errors == []
    finally:
        delete_machine_named(base, NAME)
        delete_machine_named(base, NAME + " 2")
        delete_machine_named(base, NAME + " 3")
        if job_id is not None:
            release_job(base, job_id)
