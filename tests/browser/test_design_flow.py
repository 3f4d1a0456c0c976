"""The demo promise: a member picks the sample bracket, changes its width, and watches it
print on a simulated printer, with its licence and authors shown on the job."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DemoServer, login

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]


def test_member_makes_the_bracket_wider_and_watches_it_print(
    page: Any, demo_server: DemoServer
) -> None:
    login(page, demo_server.url, "member", "member-demo-pass")
    expect(page.get_by_role("heading", name="Machines", level=1)).to_be_visible()
    page.get_by_role("link", name="Designs", exact=True).click()
    page.get_by_role("link", name="Parametric L-bracket").first.click()
    expect(page.get_by_text("CERN-OHL-S-2.0").first).to_be_visible()
    page.get_by_label(re.compile(r"^width")).fill("35")
    page.get_by_role("button", name="Submit a job from this design").click()
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    # The job page follows the server's event stream: it changes in place, never reloads
    # (a reload would drop this marker).
    page.evaluate("window.__samePage = true")
    expect(page.get_by_text("width = 35")).to_be_visible()
    expect(page.get_by_role("heading", name="Design and licence")).to_be_visible()
    # OpenSCAD and PrusaSlicer make the G-code (with the demo's relative data directory),
    # the queue picks a simulated printer, and the job page (live, from the event stream)
    # shows it running.
    expect(page.locator("#job-state")).to_have_text(re.compile("running|finished"), timeout=180_000)
    expect(page.get_by_text(re.compile(r"Prusa MK3S #\d"))).to_be_visible()
    assert page.evaluate("window.__samePage === true"), "the job page reloaded itself"
    job_url = page.url
    # The live machine grid shows the job on its printer.
    page.get_by_role("link", name="Machines", exact=True).click()
    card = page.locator("article.machine", has=page.get_by_role("link", name=re.compile("Job")))
    expect(card.first).to_be_visible(timeout=30_000)
    # The simulated printer runs the whole program: the job ends finished.
    page.goto(job_url)
    page.evaluate("window.__samePage = true")
    expect(page.locator("#job-state")).to_have_text("finished", timeout=400_000)
    assert page.evaluate("window.__samePage === true"), "the job page reloaded itself"
    assert page.locator("#job-progress").evaluate("bar => bar.value") == 100
    assert demo_server.data_dir.is_dir()
    assert "preparing job" not in demo_server.log_path.read_text()
