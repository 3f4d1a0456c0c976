"""A Prusa printer behind PrusaLink is added in the dashboard and shows live on the grid.

The peer is PrusaLink's v1 API (tests/peers/prusalink_server.py): the real PrusaLink 0.8.1
starts here but cannot print without a Prusa firmware simulator (docs/prusalink.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DemoServer, delete_machine_named, login
from tests.peers.prusalink_server import PrusaLinkServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SCREENSHOTS = Path(os.environ.get("MICROFACTORY_TEST_SCREENSHOTS", "/tmp/microfactory-screens"))
NAME = "Prusa MK4 (PrusaLink)"


@pytest.fixture(scope="module")
def prusalink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrusaLinkServer]:
    server = PrusaLinkServer(tmp_path_factory.mktemp("prusalink-grid") / "gcodes")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_admin_adds_a_prusalink_printer_and_the_grid_shows_it_live(
    browser: Any, demo_server: DemoServer, prusalink: PrusaLinkServer
) -> None:
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
        admin.get_by_label("Driver").select_option("prusalink")
        expect(admin.get_by_label("Serial port")).to_be_hidden()
        admin.get_by_label("Name", exact=True).fill(NAME)
        admin.get_by_label("Kind").select_option("fdm_printer")
        admin.get_by_label("Server address").fill(prusalink.url)
        admin.get_by_label("PrusaLink username").fill(prusalink.user)
        admin.get_by_label("PrusaLink password").fill(prusalink.password)
        admin.get_by_label("Build volume X (mm)").fill("250")
        admin.get_by_label("Y (mm)").fill("210")
        admin.get_by_label("Z (mm)").fill("220")
        admin.get_by_role("button", name="Add machine").click()
        expect(admin.get_by_role("status")).to_contain_text(f"{NAME} was added")
        assert prusalink.password not in admin.content()  # never echoed back

        # The grid, open all along, shows the printer connected through PrusaLink, then a
        # fault at the printer with its message, then the printer back: without a reload.
        card = grid.locator("article.machine", has_text=NAME)
        expect(card).to_be_visible()
        expect(card.locator("[data-field=state]")).to_have_text("idle")
        prusalink.printer.error("Thermal runaway: heatbed")
        expect(card.locator("[data-field=state]")).to_have_text("error")
        expect(card.locator("[data-field=message]")).to_contain_text(
            re.compile("Thermal runaway: heatbed")
        )
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        grid.screenshot(path=str(SCREENSHOTS / "grid-prusalink.png"), full_page=True)
        prusalink.printer.reset()
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
