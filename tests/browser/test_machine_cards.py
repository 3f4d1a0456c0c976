"""The machine grid's cards in Chromium: a machine's photo, the running job's slicer picture
(arriving live, with no reload), and machine pages without a webcam, or with one that is
away, that log no console error."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.api.test_job_media import png, with_thumbnails
from tests.browser.conftest import DemoServer, api_token, free_port, login, release_job

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(240)]
PHOTOGRAPHED = "Ender 3 (manual)"
PRINTER = "Prusa MK3S #2"
NO_CAMERA = "Ender 3 (manual)"
CAMERA_AWAY = "Laser cutter 40W"
# Slow moves (1 mm/s): even at the demo's speed the job runs for minutes, until released.
LONG_PRINT = b"G28\nG90\n" + b"G1 X10 Y10 F60\nG1 X200 Y200 F60\n" * 200


def _machine_ids(base: str, headers: dict[str, str]) -> dict[str, int]:
    machines = httpx.get(base + "/api/v1/machines", headers=headers, timeout=10).json()
    return {m["name"]: int(m["id"]) for m in machines}


def test_cards_show_the_photo_and_the_running_jobs_picture_and_pages_log_no_errors(
    page: Any, demo_server: DemoServer
) -> None:
    base = demo_server.url
    admin = api_token(base, "admin", "admin-demo-pass")
    member = api_token(base, "member", "member-demo-pass")
    ids = _machine_ids(base, admin)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    login(page, base, "admin", "admin-demo-pass")
    page.wait_for_url("**/machines")

    # An admin adds a photo in the machine's form; its card on the grid shows it.
    page.goto(f"{base}/admin/machines/{ids[PHOTOGRAPHED]}")
    page.get_by_label("Add a photo").set_input_files(
        {"name": "machine.png", "mimeType": "image/png", "buffer": png(96, 64)}
    )
    page.get_by_role("button", name="Upload photo").click()
    expect(page.get_by_text("Photo added.")).to_be_visible()
    # A photo past the limit (8 MiB) is refused before it is sent...
    too_big = {
        "name": "big.jpg",
        "mimeType": "image/jpeg",
        "buffer": b"\xff\xd8\xff" + bytes(9 << 20),
    }
    page.get_by_label("Add a photo").set_input_files(too_big)
    page.get_by_role("button", name="Upload photo").click()
    assert "larger than 8 MiB" in page.get_by_label("Add a photo").evaluate(
        "(el) => el.validationMessage"
    )
    # ...and, sent anyway (no JavaScript check), the server answers a page that says so.
    page.locator("form[data-max-bytes]").evaluate(
        "(form) => form.removeAttribute('data-max-bytes')"
    )
    page.get_by_label("Add a photo").set_input_files(too_big)  # a change clears the refusal
    page.get_by_role("button", name="Upload photo").click()
    expect(page.get_by_role("heading", name="The photo is too large")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("larger than 8 MiB")
    page.get_by_role("link", name="Back to the machine's photos").click()
    expect(page.get_by_role("button", name="Upload photo")).to_be_visible()
    # Chromium logs any 4xx page it is shown; the grid and machine pages below must log none.
    assert errors == [
        "Failed to load resource: the server responded with a status of 413 "
        "(Request Entity Too Large)"
    ]
    errors.clear()
    page.goto(base + "/machines")
    photo = page.locator(f'[data-machine-id="{ids[PHOTOGRAPHED]}"]').get_by_role(
        "img", name=f"Photo of {PHOTOGRAPHED}"
    )
    expect(photo).to_be_visible()
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth === 96", arg=photo.element_handle()
    )

    # A member's job with a slicer picture starts on a printer while the grid is open: the
    # card shows the picture, no reload.
    card = page.locator(f'[data-machine-id="{ids[PRINTER]}"]')
    expect(card.locator("[data-field=state]")).to_have_text("idle", timeout=60_000)
    content = with_thumbnails((48, 48, png(48, 48)), gcode=LONG_PRINT)
    job = httpx.post(
        base + "/api/v1/jobs",
        files={"file": ("long.gcode", content, "text/plain")},
        data={"machine_id": str(ids[PRINTER]), "title": "Card picture"},
        headers=member,
        timeout=30,
    )
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    try:
        if job.json()["state"] == "submitted":  # the demo shop may approve it by itself
            approved = httpx.post(f"{base}/api/v1/jobs/{job_id}/approve", headers=admin)
            assert approved.status_code == 200, approved.text
        card = page.locator(f'[data-machine-id="{ids[PRINTER]}"]')  # a refresh replaces it
        thumb = card.get_by_role("img", name=f"The slicer's picture of job {job_id}")
        expect(thumb).to_be_visible(timeout=90_000)
        page.wait_for_function(
            "(img) => img.complete && img.naturalWidth === 48", arg=thumb.element_handle()
        )
        expect(card.get_by_role("link", name=f"Job {job_id}")).to_be_visible()
    finally:
        release_job(base, job_id)
    # The job ended: its picture leaves the card with it.
    expect(card.locator("[data-job-thumb]")).to_have_count(0, timeout=30_000)

    # Machine pages without a webcam, and with one that cannot be reached: a placeholder in
    # words, and nothing in the console.
    page.goto(f"{base}/machines/{ids[NO_CAMERA]}")
    expect(page.get_by_role("heading", name=NO_CAMERA, level=1)).to_be_visible()
    expect(page.locator("[data-webcam]")).to_have_count(0)
    cam = {"stream_url": f"http://127.0.0.1:{free_port()}/stream"}  # nothing listens there
    put = httpx.put(f"{base}/api/v1/machines/{ids[CAMERA_AWAY]}/webcam", json=cam, headers=admin)
    assert put.status_code == 200, put.text
    try:
        page.goto(f"{base}/machines/{ids[CAMERA_AWAY]}")
        expect(page.locator("[data-webcam-message]")).to_have_text(
            "The webcam cannot be reached: the connection failed."
        )
        expect(page.locator("[data-webcam]")).to_be_hidden()
    finally:
        httpx.delete(f"{base}/api/v1/machines/{ids[CAMERA_AWAY]}/webcam", headers=admin)
    page.goto(base + "/machines")  # and the grid, with its photo, once more
    expect(photo).to_be_visible()
    assert errors == []
