"""The dashboard in Chromium: log in, see machines, role gates, log out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DemoServer, login

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SCREENSHOTS = Path(os.environ.get("MICROFACTORY_TEST_SCREENSHOTS", "/tmp/microfactory-screens"))


def test_member_logs_in_and_sees_the_machines(page: Any, demo_server: DemoServer) -> None:
    login(page, demo_server.url, "member", "member-demo-pass")
    expect(page.get_by_role("heading", name="Machines", level=1)).to_be_visible()
    assert page.get_by_role("heading", name="Machines", level=1).is_visible()
    names = page.locator("article.machine h2").all_inner_texts()
    assert sorted(names) == sorted(
        ["Prusa MK3S #1", "Prusa MK3S #2", "Ender 3 (manual)", "Shapeoko CNC", "Laser cutter 40W"]
    )
    laser = page.locator("article.machine", has_text="Laser cutter 40W")
    assert "laser cutter" in laser.inner_text()
    assert laser.locator("[data-field=state]").inner_text() == "idle"
    assert "40" in laser.inner_text()  # its laser power
    # Members get no link to the admin page.
    assert page.get_by_role("link", name="Users").count() == 0
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "machines.png"), full_page=True)


def test_member_is_refused_the_admin_page(page: Any, demo_server: DemoServer) -> None:
    login(page, demo_server.url, "member", "member-demo-pass")
    expect(page.get_by_role("heading", name="Machines", level=1)).to_be_visible()
    response = page.goto(demo_server.url + "/admin/users")
    assert response.status == 403
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    assert "admin" not in page.locator("main").inner_text().split("Not allowed", 1)[0]


def test_admin_creates_a_user_on_the_admin_page(page: Any, demo_server: DemoServer) -> None:
    login(page, demo_server.url, "admin", "admin-demo-pass")
    expect(page.get_by_role("heading", name="Machines", level=1)).to_be_visible()
    # The desktop menu is one line: admin pages sit under "Shop admin".
    assert page.locator("#main-menu").bounding_box()["height"] < 80
    page.get_by_text("Shop admin").click()
    page.get_by_role("link", name="Users", exact=True).click()
    page.wait_for_url("**/admin/users")
    page.get_by_label("Username").fill("newbie")
    page.get_by_label("Password (8+ characters)").fill("newbie-pass-1")
    page.get_by_role("button", name="Create user").click()
    expect(page.get_by_role("cell", name="newbie", exact=True)).to_be_visible()


def test_wrong_password_shows_an_error(page: Any, demo_server: DemoServer) -> None:
    login(page, demo_server.url, "member", "wrong-password")
    expect(page.get_by_role("alert")).to_have_text("incorrect username or password")


def test_logout_ends_the_session(page: Any, demo_server: DemoServer) -> None:
    login(page, demo_server.url, "member", "member-demo-pass")
    expect(page.get_by_role("heading", name="Machines", level=1)).to_be_visible()
    page.get_by_text("member", exact=True).click()  # the account menu
    page.get_by_role("button", name="Log out member").click()
    page.wait_for_url("**/login")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.goto(demo_server.url + "/machines")
    assert "/login" in page.url  # the session is gone


def test_phone_sized_screen_is_readable(browser: Any, demo_server: DemoServer) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = context.new_page()
    login(page, demo_server.url, "member", "member-demo-pass")
    expect(page.get_by_role("heading", name="Machines", level=1)).to_be_visible()
    # No horizontal scrolling on a phone.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375
    # The menu folds behind one button, and opens to every page.
    menu_link = page.locator("#main-menu").get_by_role("link", name="Designs", exact=True)
    expect(menu_link).to_be_hidden()
    page.get_by_role("button", name="Menu").click()
    expect(menu_link).to_be_visible()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "menu-phone.png"), full_page=True)
    menu_link.click()
    page.wait_for_url("**/designs")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "machines-phone.png"), full_page=True)
    context.close()


def test_login_form_without_csrf_token_is_refused(demo_server: DemoServer) -> None:
    import httpx

    resp = httpx.post(
        demo_server.url + "/login",
        data={"username": "member", "password": "member-demo-pass"},
        follow_redirects=False,
    )
    assert resp.status_code == 403
    assert "mf_session" not in resp.cookies
