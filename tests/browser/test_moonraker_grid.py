"""A Klipper printer behind the real Moonraker is added in the dashboard and shows live."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DemoServer, delete_machine_named, login
from tests.conftest import require_or_skip
from tests.peers.moonraker_server import MoonrakerServer, moonraker_python, venv_path

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SCREENSHOTS = Path(os.environ.get("MICROFACTORY_TEST_SCREENSHOTS", "/tmp/microfactory-screens"))
NAME = "Voron 2.4"


@pytest.fixture(scope="module")
def moonraker() -> Iterator[MoonrakerServer]:
    python = moonraker_python()
    require_or_skip(python is not None, f"Moonraker is not installed in {venv_path()}")
    assert python is not None
    server = MoonrakerServer(python=python, speed_factor=100.0)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_admin_adds_a_klipper_printer_and_the_grid_shows_klippy_live(
    browser: Any, demo_server: DemoServer, moonraker: MoonrakerServer
) -> None:
    klippy = moonraker.klippy
    assert klippy is not None
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        grid = context.new_page()
        grid.set_default_timeout(15_000)
        login(grid, demo_server.url, "admin", "admin-demo-pass")
        expect(grid.get_by_role("heading", name="Machines", level=1)).to_be_visible()
        grid.evaluate("window.__notReloaded = true")  # gone if the page reloads
        admin = context.new_page()
        admin.set_default_timeout(15_000)
        admin.goto(demo_server.url + "/admin/machines")
        admin.get_by_role("button", name="Add a machine").click()
        admin.get_by_label("Driver").select_option("moonraker")
        expect(admin.get_by_label("Serial port")).to_be_hidden()
        admin.get_by_label("Name", exact=True).fill(NAME)
        admin.get_by_label("Kind").select_option("fdm_printer")
        admin.get_by_label("Server address").fill(moonraker.url)
        admin.get_by_label("Build volume X (mm)").fill("300")
        admin.get_by_label("Y (mm)").fill("300")
        admin.get_by_label("Z (mm)").fill("280")
        admin.get_by_role("button", name="Add machine").click()
        expect(admin.get_by_role("status")).to_contain_text(f"{NAME} was added")

        # The grid, open all along, shows the printer connected, with Klippy's state and the
        # heaters Moonraker pushes, without a reload.
        card = grid.locator("article.machine", has_text=NAME)
        expect(card).to_be_visible()
        expect(card.locator("[data-field=state]")).to_have_text("idle")
        expect(card.locator("[data-field=klippy]")).to_have_text("ready")
        expect(card.locator("[data-field=temps]")).to_have_text(re.compile(r"T 21 °C\W+B 21 °C"))
        klippy.call(klippy._gcode, "M140 S60")  # the bed heats, as from the printer's screen
        expect(card.locator("[data-field=temps]")).to_have_text(
            re.compile(r"T 21 °C\W+B 60 / 60 °C")
        )
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        grid.screenshot(path=str(SCREENSHOTS / "grid-klipper.png"), full_page=True)
        # A firmware fault shows at once, with Klippy's message.
        klippy.shutdown("MCU 'mcu' shutdown: Timer too close")
        expect(card.locator("[data-field=state]")).to_have_text("error")
        expect(card.locator("[data-field=klippy]")).to_have_text(
            "shutdown: MCU 'mcu' shutdown: Timer too close"
        )
        klippy.reset()
        expect(card.locator("[data-field=klippy]")).to_have_text("ready")
        expect(card.locator("[data-field=state]")).to_have_text("idle")
        assert grid.evaluate("window.__notReloaded") is True

        # Deleted again: the demo shop is shared with the other browser tests.
        admin.goto(demo_server.url + "/admin/machines")
        admin.get_by_role("link", name=f"Edit {NAME}").click()
        admin.once("dialog", lambda dialog: dialog.accept())
        admin.get_by_role("button", name=f"Delete {NAME}").click()
        expect(admin.get_by_role("status")).to_have_text("The machine was deleted.")
        expect(card).to_have_count(0)
    finally:
        context.close()
        delete_machine_named(demo_server.url, NAME)
