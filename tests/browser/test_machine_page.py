"""The machine page in Chromium: the graph draws, an operator uses the terminal, stops the
machine and recovers it with "reset and reconnect", and the maintenance log and badges follow
what others record, all on the page's one event stream. (What a member sees of the page is
checked in-process: tests/machines/test_webcam.py.)"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import COUNT_EVENT_SOURCES, DemoServer, api_token, login

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(180)]
SCREENSHOTS = Path(os.environ.get("MICROFACTORY_TEST_SCREENSHOTS", "/tmp/microfactory-screens"))
PRINTER = "Prusa MK3S #1"


def open_machine_page(page: Any, demo_server: DemoServer, user: str, password: str) -> None:
    login(page, demo_server.url, user, password)
    page.wait_for_url("**/machines")
    page.locator("article.machine h2").get_by_role("link", name=PRINTER).click()
    page.wait_for_url(re.compile(r".*/machines/\d+$"))
    expect(page.get_by_role("heading", name=PRINTER, level=1)).to_be_visible()


def test_operator_uses_the_terminal_then_recovers_after_an_emergency_stop(
    page: Any, demo_server: DemoServer
) -> None:
    page.add_init_script(COUNT_EVENT_SOURCES)
    open_machine_page(page, demo_server, "operator", "operator-demo-pass")
    state = page.locator("[data-field=state]")
    expect(state).to_have_text("idle", timeout=30_000)

    # The graph draws the server's recent history at once, then follows the stream.
    graph = page.locator("#temp-graph")
    expect(graph.locator("canvas")).to_be_visible()
    expect(graph).to_have_attribute("data-drawn", re.compile(r"^([2-9]|\d\d+)"))
    page.get_by_role("button", name="PLA 200/60").click()
    expect(page.locator("[data-field=temps-now]")).to_contain_text("/ 200 °C")

    terminal = page.get_by_label("G-code command")
    terminal.fill("M115")
    terminal.press("Enter")
    log = page.locator("[data-terminal-log]")
    expect(log).to_contain_text("> M115")
    expect(log).to_contain_text("FIRMWARE_NAME:Marlin")
    terminal.press("ArrowUp")
    expect(terminal).to_have_value("M115")
    terminal.fill("")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Emergency stop").click()
    expect(state).to_have_text("error")
    recover = page.locator("[data-recover]")
    expect(recover).to_be_visible()
    expect(recover).to_contain_text("halted")
    terminal.fill("M105")
    terminal.press("Enter")
    expect(log).to_contain_text("halted")  # the firmware takes nothing until it is reset
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "machine-page-halted.png"), full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    recover.get_by_role("button", name="Reset and reconnect").click()
    expect(state).to_have_text("idle", timeout=30_000)
    expect(recover).to_be_hidden()
    expect(page.locator("#flash")).to_contain_text("reset and reconnected")
    terminal.fill("M115")
    terminal.press("Enter")
    expect(log.locator("div", has_text="FIRMWARE_NAME")).to_have_count(2)
    page.get_by_role("button", name="Off").click()  # leave the demo printer cold
    page.screenshot(path=str(SCREENSHOTS / "machine-page-operator.png"), full_page=True)

    # Another staff member records maintenance and flags the machine: the open page shows
    # both without a reload, and never opened a second stream for its graph and terminal.
    assert page.evaluate("window.__eventSources") == 1
    machine_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    admin = api_token(demo_server.url, "admin", "admin-demo-pass")
    maintenance_log = page.locator("#machine-maintenance")
    flags = page.locator("#machine-flags")
    expect(flags).not_to_contain_text("maintenance")
    # The operator is typing a command meanwhile: the log and the badges change beside the
    # terminal at once, and what they typed stays, focused.
    terminal.fill("G28 X")
    block = httpx.post(
        f"{demo_server.url}/api/v1/maintenance-blocks",
        json={
            "machine_id": machine_id,
            "start": "2030-03-04T09:00:00+00:00",
            "end": "2030-03-04T11:00:00+00:00",
            "reason": "nozzle swap by the admin",
        },
        headers=admin,
        timeout=10,
    )
    assert block.status_code == 201, block.text
    try:
        expect(maintenance_log).to_contain_text("nozzle swap by the admin")
        expect(maintenance_log).to_contain_text("(planned)")
        expect(terminal).to_have_value("G28 X")
        expect(terminal).to_be_focused()
        flagged = httpx.patch(
            f"{demo_server.url}/api/v1/machines/{machine_id}",
            json={"maintenance": True},
            headers=admin,
            timeout=10,
        )
        assert flagged.status_code == 200, flagged.text
        expect(flags).to_contain_text("maintenance")
        terminal.fill("")
    finally:  # the demo shop is shared with the other browser tests
        httpx.delete(
            f"{demo_server.url}/api/v1/maintenance-blocks/{block.json()['id']}",
            headers=admin,
            timeout=10,
        )
        httpx.patch(
            f"{demo_server.url}/api/v1/machines/{machine_id}",
            json={"maintenance": False},
            headers=admin,
            timeout=10,
        )
    expect(flags).not_to_contain_text("maintenance")
    expect(maintenance_log).not_to_contain_text("nozzle swap by the admin")
    page.get_by_role("button", name="PLA 200/60").click()  # the graph's stream still feeds it
    expect(page.locator("[data-field=temps-now]")).to_contain_text("/ 200 °C")
    page.get_by_role("button", name="Off").click()
    expect(page.locator("[data-field=temps-now]")).not_to_contain_text("/ 200 °C")
    assert page.evaluate("window.__eventSources") == 1
