"""The job page's thumbnail and layer preview in Chromium, and pages at phone width."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_job_media import png, with_thumbnails
from tests.browser.conftest import DemoServer, api_token, login, release_job

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CUBE = Path(__file__).parents[1] / "data" / "gcode" / "fdm" / "cube.gcode"
PHONE = {"width": 390, "height": 844}


# Every visible control has a name a screen reader can say: a label, aria-label(ledby), title,
# or a button's text.
UNNAMED_CONTROLS = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter((el) => el.type !== 'hidden'
    && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby') && !el.title
    && !(el.labels && [...el.labels].some((l) => l.textContent.trim()))
    && !(el.tagName === 'BUTTON' && el.textContent.trim()))
  .map((el) => el.outerHTML.slice(0, 120))"""


def _upload(base: str, headers: dict[str, str], content: bytes, title: str) -> dict[str, Any]:
    resp = httpx.post(
        base + "/api/v1/jobs",
        files={"file": ("cube.gcode", content, "text/plain")},
        data={"machine_kind": "fdm_printer", "title": title},
        headers=headers,
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def test_job_page_shows_the_thumbnail_and_a_layer_preview(
    page: Any, demo_server: DemoServer
) -> None:
    base = demo_server.url
    member = api_token(base, "member", "member-demo-pass")
    content = with_thumbnails((64, 64, png(64, 64)), gcode=CUBE.read_bytes())
    job = _upload(base, member, content, "Previewed cube")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    login(page, base, "member", "member-demo-pass")
    page.wait_for_url("**/machines")
    page.goto(f"{base}/jobs/{job['id']}")
    thumb = page.get_by_role("img", name="The slicer's picture of Previewed cube")
    thumb.wait_for()
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth === 64", arg=thumb.element_handle()
    )
    canvas = page.locator("#gcode-canvas")
    canvas.wait_for()
    page.locator("#gcode-preview-slot[data-layers]").wait_for(state="attached")
    layers = int(page.locator("#gcode-preview-slot").get_attribute("data-layers"))
    assert layers > 10  # the cube has about a hundred layers
    box = canvas.bounding_box()
    assert box["width"] > 200
    assert box["height"] > 200
    slider = page.get_by_label("Layers shown up to")
    slider.fill("5")
    assert page.locator("#layer-value").inner_text() == f"5 of {layers}"
    page.screenshot(path="/tmp/calendar-preview-job-page.png", full_page=True)
    assert page.evaluate(UNNAMED_CONTROLS) == []
    # The page follows the event stream and swaps its main part when the job changes: the
    # preview stays, drawn once.
    page.evaluate("window.__marker = 1")
    slider.blur()  # the page never swaps a control from under someone using it
    cancelled = httpx.post(f"{base}/api/v1/jobs/{job['id']}/cancel", headers=member, timeout=10)
    assert cancelled.status_code == 200, cancelled.text
    page.locator("#job-state", has_text="cancelled").wait_for()
    assert page.evaluate("window.__marker") == 1  # no reload
    assert page.locator("#gcode-preview-slot #gcode-canvas").count() == 1
    assert page.locator("#layer-value").inner_text() == f"5 of {layers}"
    assert errors == []
    release_job(base, job["id"])


def test_phone_width_design_page_fits_and_queue_actions_are_on_screen(
    browser: Any, demo_server: DemoServer
) -> None:
    base = demo_server.url
    admin = api_token(base, "admin", "admin-demo-pass")
    created = httpx.post(
        base + "/api/v1/users",
        json={"username": "phone-member", "password": "phone-member-pass"},
        headers=admin,
        timeout=10,
    )
    assert created.status_code in (201, 409)
    newcomer = api_token(base, "phone-member", "phone-member-pass")
    job = _upload(base, newcomer, CUBE.read_bytes(), "Waits for approval")
    assert job["state"] == "submitted"  # a new member's job waits for an operator

    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    page.set_default_timeout(15_000)
    login(page, base, "operator", "operator-demo-pass")
    page.wait_for_url("**/machines")

    page.goto(base + "/designs/1")
    page.locator("#content-hash").wait_for()
    width = page.evaluate(
        "[document.scrollingElement.scrollWidth, document.scrollingElement.clientWidth]"
    )
    assert width[0] <= width[1], width
    page.screenshot(path="/tmp/calendar-preview-design-phone.png", full_page=True)

    page.goto(base + "/queue")
    approve = page.get_by_role("button", name=f"Approve {job['id']}")
    approve.wait_for()
    buttons = page.locator("main button")
    assert buttons.count() >= 2
    for i in range(buttons.count()):
        b = buttons.nth(i).bounding_box()
        if b is None:
            continue  # hidden
        assert b["x"] >= 0
        assert b["x"] + b["width"] <= PHONE["width"], buttons.nth(i).inner_text()
    page.screenshot(path="/tmp/calendar-preview-queue-phone.png", full_page=True)
    assert page.evaluate(UNNAMED_CONTROLS) == []
    approve.click()
    page.get_by_role("button", name=f"Approve {job['id']}").wait_for(state="detached")
    context.close()
    release_job(base, job["id"])  # approved, it would print the cube on a demo printer
