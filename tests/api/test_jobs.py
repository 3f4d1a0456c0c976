"""Jobs over HTTP without a running machine: uploads, bad files, approval, permissions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from microfactory.jobs.models import Job
from microfactory.machines.limits import line_stats
from tests.conftest import UserFactory

GCODE = b"; a tiny print\nG28\nG1 X10 Y10 F3000\nM104 S0\n"


async def make_machine(
    client: httpx.AsyncClient, headers: dict[str, str], **extra: Any
) -> dict[str, Any]:
    body = {
        "name": "Printer",
        "kind": "fdm_printer",
        "driver": "marlin",
        "connection": {"port": "/dev/ttyACM0"},
        **extra,
    }
    resp = await client.post("/api/v1/machines", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


@pytest.fixture(autouse=True)
async def shop_printer(client: httpx.AsyncClient, make_user: UserFactory) -> dict[str, Any]:
    """Every test shop has one FDM printer (offline: no supervisors run here)."""
    _, staff = await make_user("operator", username="setup-operator")
    return await make_machine(
        client,
        staff,
        name="Shop printer",
        build_volume_mm={"x": 220, "y": 220, "z": 250},
        capabilities={"nozzle_diameter_mm": 0.4, "max_hotend_c": 260, "max_bed_c": 100},
    )


async def upload(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    content: bytes = GCODE,
    name: str = "part.gcode",
    **form: Any,
) -> httpx.Response:
    data = {k: str(v) for k, v in form.items()}
    data.setdefault("machine_kind", "fdm_printer")
    return await client.post(
        "/api/v1/jobs", files={"file": (name, content, "text/plain")}, data=data, headers=headers
    )


async def test_member_submits_a_job_and_an_operator_approves_it(
    client: httpx.AsyncClient, member: dict[str, str], operator: dict[str, str]
) -> None:
    resp = await upload(client, member, title="Bracket")
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["state"] == "submitted"
    assert job["lines_total"] == 3  # comments are not commands
    assert job["title"] == "Bracket"
    assert job["progress"] == {"percent": 0.0, "lines_acked": 0, "lines_total": 3, "eta_s": None}

    assert (
        await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=member)
    ).status_code == 403
    approved = await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)
    assert approved.status_code == 200
    assert approved.json()["state"] == "queued"
    assert approved.json()["queued_at"] is not None
    again = await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)
    assert again.status_code == 409


async def test_trusted_members_are_approved_automatically(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await client.post(
        "/api/v1/users",
        json={"username": "trusty", "password": "trusty-pass-1", "trusted": True},
        headers=admin,
    )
    token = (
        await client.post(
            "/api/v1/auth/token", data={"username": "trusty", "password": "trusty-pass-1"}
        )
    ).json()["access_token"]
    resp = await upload(client, {"Authorization": f"Bearer {token}"})
    assert resp.json()["state"] == "queued"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty"),
        (b"   \n\n", "empty"),
        (b"\x00\x01\x02binary\x00", "binary"),
        ("G1 X1 ; caf\u00e9".encode("latin-1"), "UTF-8"),
        (b"; only comments\n; here\n", "no G-code commands"),
    ],
)
async def test_bad_files_are_refused_and_nothing_is_kept(
    client: httpx.AsyncClient,
    member: dict[str, str],
    settings: Any,
    content: bytes,
    needle: str,
) -> None:
    resp = await upload(client, member, content=content)
    assert resp.status_code == 422
    assert needle in resp.json()["detail"]
    assert list(Path(settings.upload_dir).glob("*")) == []
    assert (await client.get("/api/v1/jobs", headers=member)).json() == []


async def test_file_over_the_upload_limit_is_413(
    client: httpx.AsyncClient, member: dict[str, str], settings: Any
) -> None:
    big = b"G1 X1 Y1\n" * (settings.max_upload_bytes // 9 + 10)
    resp = await upload(client, member, content=big)
    assert resp.status_code == 413
    assert list(Path(settings.upload_dir).glob("*")) == []


async def test_upload_is_stored_under_a_generated_name(
    client: httpx.AsyncClient, member: dict[str, str], settings: Any
) -> None:
    resp = await upload(client, member, name="../../etc/passwd.gcode")
    assert resp.status_code == 201
    assert resp.json()["file_name"] == "passwd.gcode"
    stored = list(Path(settings.upload_dir).glob("*"))
    assert len(stored) == 1
    assert stored[0].name != "passwd.gcode"
    assert stored[0].parent == Path(settings.upload_dir)


async def test_job_needs_a_machine_or_kind(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    resp = await client.post(
        "/api/v1/jobs", files={"file": ("a.gcode", GCODE, "text/plain")}, headers=member
    )
    assert resp.status_code == 422
    assert "machine_kind" in resp.json()["detail"]


async def test_job_for_a_machine_of_another_kind_is_422(
    client: httpx.AsyncClient, member: dict[str, str], operator: dict[str, str]
) -> None:
    machine = await make_machine(client, operator, name="Other printer")
    resp = await upload(client, member, machine_id=machine["id"], machine_kind="cnc_mill")
    assert resp.status_code == 422


async def test_members_see_only_their_own_jobs(
    client: httpx.AsyncClient, make_user: UserFactory, operator: dict[str, str]
) -> None:
    _, alice = await make_user("member")
    _, bob = await make_user("member")
    job = (await upload(client, alice)).json()
    assert (await client.get(f"/api/v1/jobs/{job['id']}", headers=bob)).status_code == 404
    assert (await client.get("/api/v1/jobs", headers=bob)).json() == []
    assert len((await client.get("/api/v1/jobs", headers=operator)).json()) == 1
    # Bob cannot cancel Alice's job either.
    assert (await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=bob)).status_code == 404


async def test_owner_cancels_an_unstarted_job(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    job = (await upload(client, member)).json()
    resp = await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=member)
    assert resp.status_code == 200
    assert resp.json()["state"] == "cancelled"
    again = await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=member)
    assert again.status_code == 409


async def test_dispatch_to_an_offline_machine_is_409_naming_the_reason(
    client: httpx.AsyncClient, member: dict[str, str], operator: dict[str, str]
) -> None:
    machine = await make_machine(client, operator, name="Other printer")
    job = (await upload(client, member, machine_id=machine["id"])).json()
    await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)
    resp = await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=operator)
    assert resp.status_code == 409
    assert "offline" in resp.json()["detail"]
    after = (await client.get(f"/api/v1/jobs/{job['id']}", headers=operator)).json()
    assert after["state"] == "queued"


async def test_dispatch_to_a_wrong_kind_or_manual_machine_is_409(
    client: httpx.AsyncClient, member: dict[str, str], operator: dict[str, str]
) -> None:
    mill = await make_machine(
        client,
        operator,
        name="Mill",
        kind="cnc_mill",
        driver="grbl",
        connection={"port": "/dev/ttyUSB1"},
    )
    manual = await make_machine(client, operator, name="Ender", driver="manual", connection={})
    job = (await upload(client, member)).json()
    await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)
    wrong = await client.post(
        f"/api/v1/jobs/{job['id']}/dispatch", json={"machine_id": mill["id"]}, headers=operator
    )
    assert wrong.status_code == 409
    assert "cnc mill" in wrong.json()["detail"]
    man = await client.post(
        f"/api/v1/jobs/{job['id']}/dispatch", json={"machine_id": manual["id"]}, headers=operator
    )
    assert man.status_code == 409
    assert "manual" in man.json()["detail"]


async def test_dispatching_an_unapproved_job_is_409(
    client: httpx.AsyncClient, member: dict[str, str], operator: dict[str, str]
) -> None:
    job = (await upload(client, member)).json()
    resp = await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=operator)
    assert resp.status_code == 409
    assert "approved" in resp.json()["detail"]


async def test_pause_of_a_job_that_is_not_running_is_409(
    client: httpx.AsyncClient, member: dict[str, str], operator: dict[str, str]
) -> None:
    job = (await upload(client, member)).json()
    resp = await client.post(f"/api/v1/jobs/{job['id']}/pause", headers=operator)
    assert resp.status_code == 409
    assert "running" in resp.json()["detail"]
    assert (await client.post(f"/api/v1/jobs/{job['id']}/pause", headers=member)).status_code == 403


async def test_clearing_a_job_that_never_ran_is_409(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    job = (await upload(client, member)).json()
    resp = await client.post(
        f"/api/v1/jobs/{job['id']}/clear", json={"outcome": "good"}, headers=member
    )
    assert resp.status_code == 409
    bad = await client.post(
        f"/api/v1/jobs/{job['id']}/clear", json={"outcome": "meh"}, headers=member
    )
    assert bad.status_code == 422


async def test_priority_is_set_by_operators(
    client: httpx.AsyncClient, member: dict[str, str], operator: dict[str, str]
) -> None:
    job = (await upload(client, member)).json()
    assert (
        await client.post(
            f"/api/v1/jobs/{job['id']}/priority", json={"priority": 5}, headers=member
        )
    ).status_code == 403
    resp = await client.post(
        f"/api/v1/jobs/{job['id']}/priority", json={"priority": 5}, headers=operator
    )
    assert resp.json()["priority"] == 5


FDM = (
    b"M140 S60\nM104 S215\nG28\nG90\nM82\nG92 E0\n"
    b"G1 Z0.2 F600\nG1 X10 Y10 E1 F1200\nG1 X60 Y10 E3\nG1 X60 Y60 E5\nM104 S0\n"
)


async def test_job_is_analysed_on_upload(client: httpx.AsyncClient, member: dict[str, str]) -> None:
    job = (await upload(client, member, content=FDM)).json()
    analysis = job["analysis"]
    assert analysis["process"] == "fdm"
    assert analysis["max_hotend_c"] == 215
    assert analysis["bbox_mm"]["max_x"] == 60
    assert analysis["estimated_time_s"] > 0


async def test_job_too_big_for_every_machine_is_422(
    client: httpx.AsyncClient, member: dict[str, str], settings: Any
) -> None:
    huge = FDM.replace(b"X60 Y60", b"X400 Y60")
    resp = await upload(client, member, content=huge)
    assert resp.status_code == 422
    assert "too big" in resp.json()["detail"]
    assert "Shop printer" in resp.json()["detail"]
    assert list(Path(settings.upload_dir).glob("*")) == []


async def test_hotend_hotter_than_the_machine_allows_is_422(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    resp = await upload(client, member, content=FDM.replace(b"M104 S215", b"M104 S300"))
    assert resp.status_code == 422
    assert "hotend temperature" in resp.json()["detail"]


async def test_process_must_match_the_machine_kind(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    resp = await upload(client, member, content=FDM, machine_kind="cnc_mill")
    assert resp.status_code == 422
    assert "fdm program" in resp.json()["detail"]


async def test_firmware_altering_commands_need_an_operator(
    client: httpx.AsyncClient, member: dict[str, str], operator: dict[str, str]
) -> None:
    risky = FDM + b"M500\n"
    refused = await upload(client, member, content=risky)
    assert refused.status_code == 422
    assert "M500" in refused.json()["detail"]
    assert "line 12" in refused.json()["detail"]
    sneaky = await upload(client, member, content=risky, allow_firmware_commands="true")
    assert sneaky.status_code == 403
    allowed = await upload(client, operator, content=risky, allow_firmware_commands="true")
    assert allowed.status_code == 201, allowed.text
    assert allowed.json()["allow_firmware_commands"] is True


async def test_kind_with_no_machine_in_the_shop_is_422(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    resp = await upload(client, member, content=b"G21\nG0 X1\n", machine_kind="laser_cutter")
    assert resp.status_code == 422
    assert "no laser cutter" in resp.json()["detail"]


async def test_job_lists_are_paged_with_a_cursor(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    _, member = await make_user("member")
    _, other = await make_user("member")
    ids = [(await upload(client, member, title=f"part {i}")).json()["id"] for i in range(7)]
    await upload(client, other)  # someone else's: never in the member's pages

    seen: list[int] = []
    url = "/api/v1/jobs?limit=3"
    pages = 0
    while url:
        resp = await client.get(url, headers=member)
        assert resp.status_code == 200, resp.text
        page = [j["id"] for j in resp.json()]
        assert len(page) <= 3
        seen += page
        pages += 1
        link = resp.headers.get("link")
        if link is None:
            assert "x-next-cursor" not in resp.headers
            break
        assert link.endswith('; rel="next"')
        url = link[1 : link.index(">")].removeprefix("http://testserver")
        assert "limit=3" in url
    assert seen == sorted(ids, reverse=True)  # newest first, each once, none missing
    assert pages == 3

    # A job created between pages does not shift the pages after it.
    first = await client.get("/api/v1/jobs?limit=4", headers=member)
    await upload(client, member, title="newer")
    rest = await client.get(
        f"/api/v1/jobs?limit=4&cursor={first.headers['x-next-cursor']}", headers=member
    )
    assert [j["id"] for j in first.json()] + [j["id"] for j in rest.json()] == sorted(
        ids, reverse=True
    )


async def test_a_bad_cursor_or_limit_is_422(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    bad = await client.get("/api/v1/jobs?cursor=not-ours", headers=member)
    assert bad.status_code == 422
    assert "cursor" in bad.json()["detail"]
    assert (await client.get("/api/v1/jobs?limit=0", headers=member)).status_code == 422
    assert (await client.get("/api/v1/jobs?limit=501", headers=member)).status_code == 422


async def test_the_queue_page_shows_every_queued_job_a_page_at_a_time(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    from tests.designs.test_design_pages import browser_login

    staff_user, staff = await make_user("operator")
    ids = [(await upload(client, staff, title=f"queued {i}")).json()["id"] for i in range(5)]
    await browser_login(client, staff_user.username)

    first = await client.get("/queue?limit=2")
    assert first.status_code == 200
    assert "Queued, in the order they will start (5)" in first.text
    assert "1–2 of 5" in first.text
    assert 'href="/queue?cursor=2&amp;limit=2" rel="next"' in first.text
    shown: list[int] = []
    for cursor in (0, 2, 4):
        page = (await client.get(f"/queue?limit=2&cursor={cursor}")).text
        shown += [i for i in ids if f'data-api="/api/v1/jobs/{i}/priority"' in page]
    assert sorted(shown) == sorted(ids)  # every queued job, on exactly one page
    assert len(shown) == len(set(shown))
    last = (await client.get("/queue?limit=2&cursor=4")).text
    assert 'rel="next"' not in last
    assert 'href="/queue?cursor=2&amp;limit=2" rel="prev"' in last


async def test_a_program_no_machine_firmware_takes_is_refused_at_submission(
    client: httpx.AsyncClient, operator: dict[str, str], member: dict[str, str]
) -> None:
    await make_machine(
        client, operator, name="Mill", kind="cnc_mill", driver="grbl", connection={"port": "/x"}
    )
    long = b"G21\nG90\nG1X1." + b"0" * 40 + b"Y2." + b"0" * 40 + b"F600\n"
    resp = await upload(client, member, long, name="part.nc", machine_kind="cnc_mill")
    assert resp.status_code == 422, resp.text
    assert "line 3 has 92 characters" in resp.json()["detail"]
    assert "grbl takes at most 79" in resp.json()["detail"]

    # The shop printer runs Marlin: a line too long for its command buffer is refused too.
    text = b"G28\nM117 " + b"x" * 120 + b"\nG1 X10 Y10 F1200\n"
    resp = await upload(client, member, text)
    assert resp.status_code == 422, resp.text
    assert "line 2" in resp.json()["detail"]
    assert "marlin takes at most" in resp.json()["detail"]


async def test_dispatch_to_a_machine_whose_firmware_refuses_the_program_is_409(
    client: httpx.AsyncClient, app: Any, operator: dict[str, str]
) -> None:
    mill = await make_machine(
        client, operator, name="Mill", kind="cnc_mill", driver="grbl", connection={"port": "/x"}
    )
    await make_machine(
        client, operator, name="Hand mill", kind="cnc_mill", driver="manual", connection={}
    )
    long = b"G21\nG1X1." + b"0" * 40 + b"Y2." + b"0" * 40 + b"\n"
    # Uploads refuse such a line outright; a file changed on disk after its checks (or a job
    # from before them) reaches the check at assignment, which must hold too.
    short = b"G21\nG1X1Y2F600\n"
    job = (await upload(client, operator, short, name="p.nc", machine_kind="cnc_mill")).json()
    async with app.state.sessionmaker() as session, session.begin():
        stored = await session.get(Job, job["id"])
        assert stored is not None
        (app.state.settings.upload_dir / stored.stored_name).write_bytes(long)
        stored.analysis = {
            **stored.analysis,
            "line_stats": line_stats(long.decode().splitlines()),
        }
    job = (await client.get(f"/api/v1/jobs/{job['id']}", headers=operator)).json()
    assert job["state"] == "queued"
    resp = await client.post(
        f"/api/v1/jobs/{job['id']}/dispatch", json={"machine_id": mill["id"]}, headers=operator
    )
    assert resp.status_code == 409
    assert "cannot take this program: line 2 is" in resp.json()["detail"]
    after = (await client.get(f"/api/v1/jobs/{job['id']}", headers=operator)).json()
    assert after == job | {"updated_at": after["updated_at"]}
    events = (await client.get(f"/api/v1/jobs/{job['id']}/events", headers=operator)).json()
    assert [e["to_state"] for e in events] == ["submitted", "approved", "queued"]
