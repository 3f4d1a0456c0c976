"""Admin screens in Chromium: a machine added appears live on the grid; a rate on a statement."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DemoServer, api_token, login

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SCREENSHOTS = Path(os.environ.get("MICROFACTORY_TEST_SCREENSHOTS", "/tmp/microfactory-screens"))


def test_admin_adds_a_machine_and_it_appears_live_on_the_grid(
    browser: Any, demo_server: DemoServer
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    grid = context.new_page()
    grid.set_default_timeout(15_000)
    login(grid, demo_server.url, "admin", "admin-demo-pass")
    expect(grid.get_by_role("heading", name="Machines", level=1)).to_be_visible()
    grid.evaluate("window.__notReloaded = true")  # gone if the page reloads
    admin = context.new_page()
    admin.set_default_timeout(15_000)
    admin.goto(demo_server.url + "/machines")
    admin.get_by_text("Shop admin").click()
    admin.get_by_role("link", name="Machines admin").click()
    admin.get_by_role("button", name="Add a machine").click()
    # The connection fields follow the driver.
    admin.get_by_label("Driver").select_option("octoprint")
    expect(admin.locator("input[name=api_key]")).to_be_visible()
    expect(admin.get_by_label("Serial port")).to_be_hidden()
    admin.get_by_label("Driver").select_option("manual")
    admin.get_by_label("Name", exact=True).fill("Bandsaw")
    admin.get_by_label("Kind").select_option("other")
    admin.get_by_label("Build volume X (mm)").fill("wide")
    admin.get_by_role("button", name="Add machine").click()
    expect(admin.locator("#err-volume_x")).to_have_text("write a number, such as 2.5")
    # What was typed is kept.
    expect(admin.get_by_label("Name", exact=True)).to_have_value("Bandsaw")
    admin.get_by_label("Build volume X (mm)").fill("")
    admin.get_by_role("button", name="Add machine").click()
    expect(admin.get_by_role("status")).to_contain_text("Bandsaw was added")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    admin.screenshot(path=str(SCREENSHOTS / "admin-machine.png"), full_page=True)
    # The grid, open all along, shows the new card without a reload.
    card = grid.locator("article.machine", has_text="Bandsaw")
    expect(card).to_be_visible()
    assert grid.evaluate("window.__notReloaded") is True
    grid.screenshot(path=str(SCREENSHOTS / "admin-grid-live.png"), full_page=True)
    # Test connection of a simulated printer reports its firmware.
    admin.goto(demo_server.url + "/admin/machines")
    admin.get_by_role("link", name="Edit Prusa MK3S #1").click()
    admin.get_by_role("button", name="Test connection").click()
    expect(admin.get_by_role("status")).to_contain_text("Connection test:")
    expect(admin.locator("#limits-source")).to_be_visible()
    admin.screenshot(path=str(SCREENSHOTS / "admin-machine-edit.png"), full_page=True)
    # The machine with nothing on record is deleted again (after a confirmation), so the
    # demo shop is as other tests expect it.
    admin.goto(demo_server.url + "/admin/machines")
    admin.get_by_role("link", name="Edit Bandsaw").click()
    admin.once("dialog", lambda dialog: dialog.accept())
    admin.get_by_role("button", name="Delete Bandsaw").click()
    expect(admin.get_by_role("status")).to_have_text("The machine was deleted.")
    expect(admin.get_by_role("cell", name="Bandsaw")).to_have_count(0)
    expect(card).to_have_count(0)  # and the grid drops its card, still without a reload
    assert grid.evaluate("window.__notReloaded") is True
    # The admin's machine list is live too: a machine flagged elsewhere shows its badge.
    grid.goto(demo_server.url + "/admin/machines")
    grid.evaluate("window.__notReloaded = true")
    row = grid.locator("tr", has=grid.get_by_role("cell", name="Prusa MK3S #1", exact=True))
    expect(row.locator("[data-field=state]")).to_be_visible()
    machine_id = row.get_attribute("data-machine-id")
    headers = api_token(demo_server.url, "admin", "admin-demo-pass")
    url = f"{demo_server.url}/api/v1/machines/{machine_id}"
    try:
        resp = httpx.patch(url, json={"maintenance": True}, headers=headers, timeout=10)
        assert resp.status_code == 200, resp.text
        expect(row).to_contain_text("maintenance")
    finally:  # the demo shop is shared with the other browser tests
        httpx.patch(url, json={"maintenance": False}, headers=headers, timeout=10)
    expect(row).not_to_contain_text("maintenance")
    assert grid.evaluate("window.__notReloaded") is True
    context.close()


def _log_usage(demo_server: DemoServer, username: str, machine_name: str, hours: float) -> None:
    """Append a usage record to the demo's database, as a finished booking would."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from microfactory.accounts.models import User
    from microfactory.machines.models import Machine
    from microfactory.usage.models import UsageRecord

    engine = create_engine(f"sqlite:///{demo_server.data_dir / 'microfactory.sqlite3'}")
    ended = dt.datetime.now(dt.UTC)
    with Session(engine) as session, session.begin():
        user = session.scalars(select(User).where(User.username == username)).one()
        machine = session.scalars(select(Machine).where(Machine.name == machine_name)).one()
        session.add(
            UsageRecord(
                user_id=user.id,
                machine_id=machine.id,
                source="booking",
                started_at=ended - dt.timedelta(hours=hours),
                ended_at=ended,
                active_s=hours * 3600,
                outcome="finished",
            )
        )
    engine.dispose()


def test_admin_sets_a_rate_and_sees_it_on_a_statement(page: Any, demo_server: DemoServer) -> None:
    _log_usage(demo_server, "operator", "Laser cutter 40W", 2.0)  # no plan: every hour billed
    login(page, demo_server.url, "admin", "admin-demo-pass")
    expect(page.get_by_role("heading", name="Machines", level=1)).to_be_visible()
    page.get_by_text("Shop admin").click()
    page.get_by_role("link", name="Rates and plans").click()
    page.get_by_label("Rate per hour for laser cutter").fill("12.34")
    page.get_by_role("button", name="Set rate for laser cutter").click()
    expect(page.get_by_role("status")).to_have_text("Hourly rate saved.")
    expect(page.locator('[data-rate="laser_cutter"]')).to_have_text("12.34 per hour")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "admin-rates.png"), full_page=True)
    # The shop-wide statements: the operator's two laser hours at 12.34.
    page.goto(demo_server.url + "/statement")
    page.get_by_role("link", name="operator", exact=True).click()
    expect(page.locator("[data-total]")).to_have_text("24.68")
    page.screenshot(path=str(SCREENSHOTS / "admin-statement.png"), full_page=True)
    page.goto(demo_server.url + "/usage")
    expect(page.get_by_role("heading", name="Shop usage", exact=False)).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / "admin-usage.png"), full_page=True)
