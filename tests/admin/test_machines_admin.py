"""Machines admin pages: add and edit with per-driver fields, secrets kept, test, limits, photos."""

from __future__ import annotations

from typing import Any

import httpx

from microfactory.accounts.models import Role
from microfactory.machines import service as machine_service
from microfactory.machines.models import Machine
from microfactory.runtime import probe
from tests.admin.conftest import CSRF, WebClient

MACHINE = {
    "csrf_token": CSRF,
    "name": "Octo",
    "kind": "fdm_printer",
    "driver": "octoprint",
    "url": "http://127.0.0.1:9",
    "api_key": "SECRET-key-123456",
    "volume_x": "250",
    "volume_y": "210",
    "volume_z": "200",
    "materials": "PLA, PETG",
}


async def _machine(app: Any, machine_id: int) -> Machine:
    async with app.state.sessionmaker() as session:
        return await machine_service.get_or_raise(session=session, machine_id=machine_id)


async def test_admin_adds_and_edits_a_machine_and_the_key_is_never_shown(
    app: Any, web_client: WebClient, client: httpx.AsyncClient
) -> None:
    web, _ = await web_client()
    resp = await web.post("/admin/machines/new", data=MACHINE)
    assert resp.status_code == 303, resp.text
    machine_id = int(resp.headers["location"].split("/")[3].split("?")[0])
    page = await web.get(resp.headers["location"])
    assert "Octo was added" in page.text
    assert "SECRET-key" not in page.text
    assert "3456" not in page.text
    assert "leave blank to keep it" in page.text
    # Saved with a blank key: the stored key stays.
    edit = {**MACHINE, "name": "Octo 2", "api_key": "", "materials": "PLA"}
    resp = await web.post(f"/admin/machines/{machine_id}", data=edit)
    assert resp.status_code == 303, resp.text
    machine = await _machine(app, machine_id)
    assert machine.name == "Octo 2"
    assert machine.connection["api_key"] == "SECRET-key-123456"
    assert machine.capabilities["materials"] == ["PLA"]
    assert machine.build_volume_x_mm == 250
    # The machine grid lists it.
    grid = await web.get("/machines")
    assert f'data-machine-id="{machine_id}"' in grid.text
    listing = await web.get("/admin/machines")
    assert "Octo 2" in listing.text
    # Its slicer profile: generated, edited (checked as PrusaSlicer reads it), then reset.
    url = f"/admin/machines/{machine_id}/slicer-profile"
    page = await web.get(f"/admin/machines/{machine_id}")
    assert "Generated from this machine" in page.text
    bad = "printer_technology = SLA\nlayer_height = 0.2\n"
    resp = await web.post(url, data={"csrf_token": CSRF, "profile": bad, "action": "save"})
    assert resp.status_code == 422
    assert "only FFF is supported" in resp.text
    assert "printer_technology = SLA" in resp.text  # what was typed stays in the box
    good = "printer_technology = FFF\nlayer_height = 0.15\n"
    resp = await web.post(url, data={"csrf_token": CSRF, "profile": good, "action": "save"})
    assert resp.status_code == 303
    page = await web.get(f"/admin/machines/{machine_id}")
    assert "layer_height = 0.15" in page.text
    assert "Use the generated profile" in page.text
    resp = await web.post(url, data={"csrf_token": CSRF, "action": "reset"})
    assert resp.status_code == 303
    assert "Generated from this machine" in (await web.get(resp.headers["location"])).text


async def test_refused_machine_form_says_why_next_to_the_field_and_keeps_the_input(
    web_client: WebClient,
) -> None:
    web, _ = await web_client()
    bad = {
        **MACHINE,
        "driver": "marlin",
        "port": "ttyUSB0",
        "baudrate": "12345",
        "volume_x": "wide",
        "name": "Keep <me>",
    }
    resp = await web.post("/admin/machines/new", data=bad)
    assert resp.status_code == 422
    assert 'id="err-volume_x">write a number, such as 2.5' in resp.text
    assert 'value="Keep &lt;me&gt;"' in resp.text
    assert 'value="ttyUSB0"' in resp.text
    assert "SECRET-key" not in resp.text  # a secret is not typed back into the page
    resp = await web.post("/admin/machines/new", data={**bad, "volume_x": "250"})
    assert resp.status_code == 422
    assert 'id="err-port">port must be a device path such as /dev/ttyUSB0' in resp.text
    assert 'id="err-baudrate">' in resp.text
    assert "Pydantic" not in resp.text
    assert "Value error" not in resp.text
    resp = await web.post("/admin/machines/new", data={**MACHINE, "url": "octopi"})
    assert 'id="err-url">write OctoPrint&#39;s address, such as http://octopi.local' in resp.text
    # OctoPrint without a key: asked for it.
    resp = await web.post("/admin/machines/new", data={**MACHINE, "api_key": ""})
    assert resp.status_code == 422
    assert 'id="err-api_key">fill this in' in resp.text
    # A name already taken.
    assert (await web.post("/admin/machines/new", data=MACHINE)).status_code == 303
    resp = await web.post("/admin/machines/new", data=MACHINE)
    assert resp.status_code == 422
    assert 'id="err-name">another machine has this name' in resp.text


async def test_pages_are_for_admins_and_forms_need_the_csrf_token(
    web_client: WebClient,
) -> None:
    operator, _ = await web_client(Role.OPERATOR, "op")
    assert (await operator.get("/admin/machines")).status_code == 403
    assert (await operator.get("/admin/rates")).status_code == 403
    admin, _ = await web_client()
    resp = await admin.post("/admin/machines/new", data={**MACHINE, "csrf_token": "wrong"})
    assert resp.status_code == 403
    assert (await admin.get("/admin/machines/999")).status_code == 404


async def test_delete_disable_notes_and_limits(app: Any, web_client: WebClient) -> None:
    web, _ = await web_client()
    mill = {"csrf_token": CSRF, "name": "Mill", "kind": "cnc_mill", "driver": "sim-grbl"}
    resp = await web.post("/admin/machines/new", data=mill)
    assert resp.status_code == 303, resp.text
    machine_id = int(resp.headers["location"].split("/")[3].split("?")[0])
    base = f"/admin/machines/{machine_id}"
    # Disable, notes.
    resp = await web.post(base + "/enabled", data={"csrf_token": CSRF, "enabled": "false"})
    assert resp.status_code == 303
    assert not (await _machine(app, machine_id)).enabled
    resp = await web.post(base + "/notes", data={"csrf_token": CSRF, "notes": "Oil weekly"})
    assert resp.status_code == 303
    assert "Oil weekly" in (await web.get("/machines")).text
    # An operator's override of the motion limits, kept with who and when.
    limits = {
        "csrf_token": CSRF,
        "action": "save",
        **{f"max_feedrate_{a}": v for a, v in zip("xyze", ("300", "300", "10", "60"), strict=True)},
        "junction_deviation": "0.02",
    }
    resp = await web.post(base + "/motion-limits", data=limits)
    assert resp.status_code == 303, resp.text
    stored = (await _machine(app, machine_id)).capabilities["motion_limits"]
    assert stored["max_feedrate"] == [300, 300, 10, 60]
    assert stored["source"] == "operator"
    assert stored["set_by"] == "boss"
    page = await web.get(base)
    assert "Set by an operator (boss)" in page.text
    resp = await web.post(
        base + "/motion-limits", data={**limits, "max_feedrate_x": "fast", "max_jerk_x": "5"}
    )
    assert resp.status_code == 422
    assert 'value="fast"' in resp.text
    assert "write a number, such as 2.5" in resp.text
    assert "give all four axes" in resp.text
    resp = await web.post(base + "/motion-limits", data={**limits, "max_jerk_e": "1e999"})
    assert resp.status_code == 422
    resp = await web.post(base + "/motion-limits", data={"csrf_token": CSRF, "action": "clear"})
    assert resp.status_code == 303
    assert (await _machine(app, machine_id)).capabilities.get("motion_limits") is None
    # Nothing refers to it: it can be deleted.
    resp = await web.post(base + "/delete", data={"csrf_token": CSRF})
    assert resp.status_code == 303
    assert (await web.get(base)).status_code == 404


async def test_a_machine_with_usage_is_not_deleted_and_says_why(
    app: Any, web_client: WebClient
) -> None:
    web, admin = await web_client()
    resp = await web.post(
        "/admin/machines/new",
        data={"csrf_token": CSRF, "name": "Laser", "kind": "laser_cutter", "driver": "manual"},
    )
    machine_id = int(resp.headers["location"].split("/")[3].split("?")[0])
    from microfactory.usage import service as usage_service

    async with app.state.sessionmaker() as session:
        import datetime as dt

        now = dt.datetime.now(dt.UTC)
        await usage_service.append(
            session=session,
            user_id=admin.id,
            machine_id=machine_id,
            started_at=now - dt.timedelta(hours=1),
            ended_at=now,
            active_s=3600,
            source="manual",
            outcome="good",
        )
        await session.commit()
    resp = await web.post(f"/admin/machines/{machine_id}/delete", data={"csrf_token": CSRF})
    assert resp.status_code == 409
    assert "usage_records on record" in resp.text
    assert "cannot be deleted" in resp.text
    assert "PATCH" not in resp.text


async def test_photos_are_stored_under_generated_names_and_checked(
    app: Any, web_client: WebClient
) -> None:
    web, _ = await web_client()
    resp = await web.post(
        "/admin/machines/new",
        data={"csrf_token": CSRF, "name": "Mill", "kind": "cnc_mill", "driver": "manual"},
    )
    machine_id = int(resp.headers["location"].split("/")[3].split("?")[0])
    url = f"/admin/machines/{machine_id}/photos"
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    resp = await web.post(
        url, data={"csrf_token": CSRF}, files={"photo": ("../../etc/evil.png", png, "image/png")}
    )
    assert resp.status_code == 303, resp.text
    page = await web.get(f"/admin/machines/{machine_id}")
    name = page.text.split('src="/machine-photos/', 1)[1].split('"', 1)[0]
    assert name.startswith(f"{machine_id}-")
    assert name.endswith(".png")
    assert "evil" not in name
    served = await web.get(f"/machine-photos/{name}")
    assert served.status_code == 200
    assert served.content == png
    resp = await web.post(
        url, data={"csrf_token": CSRF}, files={"photo": ("x.png", b"<script>", "image/png")}
    )
    assert resp.status_code == 422
    assert "not a JPEG, PNG or WebP picture" in resp.text
    # A phone's photo: past the test settings' 64 KiB form limit, within the photo limit.
    phone = b"\xff\xd8\xff" + b"\0" * (3 * 1024 * 1024)
    resp = await web.post(url, data={"csrf_token": CSRF}, files={"photo": ("p.jpg", phone)})
    assert resp.status_code == 303, resp.text[:500]
    page = await web.get(f"/admin/machines/{machine_id}")
    assert "up to 8 MiB" in page.text
    assert 'data-max-bytes="8388608"' in page.text
    await a_photo_past_the_limit_is_refused_in_plain_words(web, url)
    assert (await web.get("/machine-photos/..%2Fsecret")).status_code == 404
    resp = await web.post(f"{url}/{name}/remove", data={"csrf_token": CSRF})
    assert resp.status_code == 303
    assert (await web.get(f"/machine-photos/{name}")).status_code == 404


async def a_photo_past_the_limit_is_refused_in_plain_words(
    web: httpx.AsyncClient, url: str
) -> None:
    limit = 8 * 1024 * 1024  # MICROFACTORY_MAX_PHOTO_BYTES by default
    # Just past it: the route refuses it with the form, the message at the photo field.
    over = b"\xff\xd8\xff" + b"\0" * limit
    resp = await web.post(url, data={"csrf_token": CSRF}, files={"photo": ("o.jpg", over)})
    assert resp.status_code == 413
    assert resp.headers["content-type"].startswith("text/html")
    assert "the photo is larger than 8 MiB: make it smaller first" in resp.text
    assert 'name="photo"' in resp.text  # the form is there to try again
    # Far past it: the upload limit stops reading and answers a page, not JSON.
    huge = b"\xff\xd8\xff" + b"\0" * (limit + 1024 * 1024)
    resp = await web.post(url, data={"csrf_token": CSRF}, files={"photo": ("h.jpg", huge)})
    assert resp.status_code == 413
    assert resp.headers["content-type"].startswith("text/html")
    assert "larger than 8 MiB, the most a machine&#x27;s photo may be" in resp.text
    assert f'href="{url.removesuffix("/photos")}#photos"' in resp.text
    assert "detail" not in resp.text
    # Not a file at all, or a form that is not multipart: words, not a validation dump.
    resp = await web.post(url, data={"csrf_token": CSRF, "photo": "just text"})
    assert resp.status_code in (400, 422), resp.text[:300]
    assert '"loc"' not in resp.text
    assert "choose a photo" in resp.text
    # A plain form past the general form limit gets the general limit, not the photo's.
    resp = await web.post(url, data={"csrf_token": CSRF, "x": "y" * (100 * 1024)})
    assert resp.status_code == 413


async def test_test_connection_reports_the_firmware_or_the_error(
    app: Any, web_client: WebClient
) -> None:
    web, _ = await web_client()
    resp = await web.post(
        "/admin/machines/new",
        data={"csrf_token": CSRF, "name": "Sim", "kind": "fdm_printer", "driver": "sim-marlin"},
    )
    sim_id = int(resp.headers["location"].split("/")[3].split("?")[0])
    # The simulator speaks Marlin on a real pty: the test connects, reads M115, closes.
    resp = await web.post(f"/admin/machines/{sim_id}/test", data={"csrf_token": CSRF})
    assert resp.status_code == 200
    assert "Connection test: connected: firmware Marlin 2.1.2.4 (sim-marlin)" in resp.text
    resp = await web.post(
        "/admin/machines/new",
        data={
            "csrf_token": CSRF,
            "name": "Unplugged",
            "kind": "fdm_printer",
            "driver": "marlin",
            "port": "/dev/ttyNOSUCHPORT0",
            "baudrate": "115200",
        },
    )
    gone_id = int(resp.headers["location"].split("/")[3].split("?")[0])
    resp = await web.post(f"/admin/machines/{gone_id}/test", data={"csrf_token": CSRF})
    assert "Connection test failed:" in resp.text
    assert "ttyNOSUCHPORT0" in resp.text


class _BusyFleet:
    """A command channel whose machine runs job 7 (the probe must not touch the machine)."""

    def running_job(self, machine_id: int) -> int | None:
        return 7

    def status(self, machine: Machine) -> dict[str, Any]:
        return {"state": "running", "firmware": "Marlin"}


async def test_a_running_machine_is_not_tested() -> None:
    machine = Machine(id=1, name="Busy", driver="marlin", connection={"port": "/dev/null"})
    result = await probe.probe(_BusyFleet(), machine)  # type: ignore[arg-type]
    assert not result.ok
    assert "running job 7" in result.message


async def test_bad_input_to_the_admin_pages_is_a_4xx_page_never_a_500(
    web_client: WebClient,
) -> None:
    web, _ = await web_client()
    posts = [
        ("/admin/machines/new", {"name": "x" * 400}),
        ("/admin/machines/new", {"driver": "teleporter", "kind": "fdm_printer", "name": "T"}),
        ("/admin/machines/new", {"driver": "manual", "kind": "spaceship", "name": "T"}),
        ("/admin/machines/new", {"driver": "manual", "kind": "other", "name": "", "power_w": "-5"}),
        ("/admin/machines/99999999999999999999/notes", {"notes": "x"}),
        ("/admin/machines/1/motion-limits", {"max_feedrate_x": "1e999"}),
        ("/admin/rates/machine-kinds", {"kind": "other", "per_hour": "NaN"}),
        ("/admin/rates/machine-kinds", {"kind": "other", "per_hour": "9" * 40}),
        ("/admin/rates/materials", {"material": "", "per_gram": "1"}),
        ("/admin/rates/plans", {"name": "", "included_hours": "nan"}),
        ("/admin/rates/memberships", {"user_id": "9" * 30, "plan_id": "x"}),
        ("/admin/users/999999/password", {"action": "generate"}),
    ]
    for url, data in posts:
        resp = await web.post(url, data={"csrf_token": CSRF, **data})
        assert 400 <= resp.status_code < 500, (url, data, resp.status_code, resp.text[:300])
        assert resp.headers["content-type"].startswith("text/html"), (url, data)
    for url in (
        "/usage?month=2026-99",
        "/statement?member=abc&month=x",
        "/usage?member=" + "9" * 12,
    ):
        resp = await web.get(url)
        assert resp.status_code < 500, (url, resp.status_code)
