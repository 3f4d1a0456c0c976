"""Dashboard pages of the design library, driven over HTTP with a logged-in browser session."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.conftest import UserFactory
from tests.designs.conftest import CUBE_STL, post_design


async def browser_login(client: httpx.AsyncClient, username: str) -> str:
    """Log in through the login form; return the CSRF token for later form posts."""
    page = await client.get("/login")
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert token
    resp = await client.post(
        "/login",
        data={"username": username, "password": "s3cret-pass!", "csrf_token": token.group(1)},
    )
    assert resp.status_code == 303, resp.text
    return token.group(1)


async def test_browse_search_and_view_with_licence_and_parameters(
    client: httpx.AsyncClient, make_user: UserFactory, bracket_dir: Path
) -> None:
    user, headers = await make_user("member")
    scad = (bracket_dir / "l-bracket.scad").read_bytes()
    design = (
        await post_design(
            client,
            headers,
            [("l-bracket.scad", scad), ("cube.stl", CUBE_STL)],
            title="Parametric L-bracket",
            licence="CC-BY-NC-4.0",
            authors=["Ana Maker"],
            source_url="https://example.org/b",
        )
    ).json()
    await browser_login(client, user.username)

    listing = await client.get("/designs")
    assert listing.status_code == 200
    assert "Parametric L-bracket" in listing.text
    assert 'href="/designs"' in listing.text  # the nav link
    assert ">NC<" in listing.text
    assert "Parametric L-bracket" not in (await client.get("/designs?q=nothing-like-it")).text

    page = await client.get(f"/designs/{design['id']}")
    assert page.status_code == 200
    text = page.text
    assert "CC-BY-NC-4.0" in text
    assert "Ana Maker" in text
    assert "NC: non-commercial" in text
    assert design["content_hash"] in text
    assert "watertight" in text
    assert "10.0 × 10.0 × 10.0 mm" in text
    assert re.search(r'name="p.width" type="number" value="20"\s+min="10.0" max="60.0"', text)
    assert 'step="1.0"' in text
    assert '<select id="param-hole_d" name="p.hole_d"' in text
    assert 'action="/designs/' + str(design["id"]) + '/make"' in text

    assert (await client.get("/designs/9999")).status_code == 404
    assert (await client.get("/designs/import")).status_code == 403  # operators only


async def test_make_refuses_bad_parameters_and_nd_changes_on_the_page(
    client: httpx.AsyncClient, make_user: UserFactory, bracket_dir: Path
) -> None:
    user, headers = await make_user("member")
    scad = (bracket_dir / "l-bracket.scad").read_bytes()
    free = (await post_design(client, headers, [("b.scad", scad)])).json()
    nd = (await post_design(client, headers, [("nd.scad", scad)], licence="CC-BY-ND-4.0")).json()
    token = await browser_login(client, user.username)

    def form(design: dict[str, object], width: str) -> dict[str, str]:
        files = design["files"]
        assert isinstance(files, list)
        return {
            "csrf_token": token,
            "file_id": str(files[0]["id"]),
            "p.width": width,
            "copies": "1",
            "target": "kind:fdm_printer",
        }

    too_wide = await client.post(f"/designs/{free['id']}/make", data=form(free, "99"))
    assert too_wide.status_code == 422
    assert "parameter &#39;width&#39;: &#39;99&#39; is out of range: allowed 10 to 60" in (
        too_wide.text
    )
    changed = await client.post(f"/designs/{nd['id']}/make", data=form(nd, "30"))
    assert changed.status_code == 409
    assert "no-derivatives" in changed.text
    no_csrf = await client.post(
        f"/designs/{free['id']}/make", data={**form(free, "20"), "csrf_token": "x"}
    )
    assert no_csrf.status_code == 403


async def test_add_and_import_from_the_dashboard(
    client: httpx.AsyncClient, make_user: UserFactory, bracket_dir: Path
) -> None:
    user, _ = await make_user("operator")
    token = await browser_login(client, user.username)
    assert (await client.get("/designs/new")).status_code == 200
    added = await client.post(
        "/designs/new",
        data={
            "csrf_token": token,
            "title": "Cube",
            "licence": "MIT",
            "authors": "Ana\nBo",
            "tags": "cube, test",
        },
        files=[("files", ("cube.stl", CUBE_STL, "model/stl"))],
    )
    assert added.status_code == 303, added.text
    page = await client.get(added.headers["location"])
    assert "Ana, Bo" in page.text

    bad = await client.post(
        "/designs/new",
        data={"csrf_token": token, "title": "Bad", "licence": "Nope-1.0"},
        files=[("files", ("x.stl", CUBE_STL, "model/stl"))],
    )
    assert bad.status_code == 422
    assert "Nope-1.0" in bad.text

    assert (await client.get("/designs/import")).status_code == 200
    imported = await client.post(
        "/designs/import",
        data={"csrf_token": token},
        files=[
            ("files", (n, (bracket_dir / n).read_bytes(), "application/octet-stream"))
            for n in ("okh.yml", "l-bracket.scad", "l-bracket.stl")
        ],
    )
    assert imported.status_code == 303, imported.text
    assert "Parametric L-bracket" in (await client.get(imported.headers["location"])).text


async def test_make_submits_a_job_carrying_the_attribution(
    client: httpx.AsyncClient, make_user: UserFactory, admin: dict[str, str], bracket_dir: Path
) -> None:
    printer = await client.post(
        "/api/v1/machines",
        json={
            "name": "Printer",
            "kind": "fdm_printer",
            "driver": "marlin",
            "connection": {"port": "/dev/ttyACM0"},
            "build_volume_mm": {"x": 220, "y": 220, "z": 250},
            "capabilities": {"nozzle_diameter_mm": 0.4, "loaded_material": "PLA"},
        },
        headers=admin,
    )
    assert printer.status_code == 201, printer.text
    user, headers = await make_user("member")
    scad = (bracket_dir / "l-bracket.scad").read_bytes()
    design = (
        await post_design(client, headers, [("l-bracket.scad", scad)], authors=["Ana Maker"])
    ).json()
    token = await browser_login(client, user.username)
    resp = await client.post(
        f"/designs/{design['id']}/make",
        data={
            "csrf_token": token,
            "file_id": str(design["files"][0]["id"]),
            "p.width": "30",
            "p.length": "40",
            "p.hole_d": "5",
            "p.thickness": "4",
            "material": "PLA",
            "copies": "2",
            "target": "kind:fdm_printer",
        },
    )
    assert resp.status_code == 303, resp.text
    job_id = int(resp.headers["location"].rsplit("/", 1)[1])
    job = (await client.get(f"/api/v1/jobs/{job_id}", headers=headers)).json()
    assert job["parameters"]["width"] == 30
    assert job["attribution"]["content_hash"] == design["content_hash"]
    assert job["attribution"]["authors"] == ["Ana Maker"]
