"""The design library over HTTP: create, search, content hash, licences, files, parameters."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from microfactory.config import Settings
from microfactory.designs.storage import content_hash
from tests.designs.conftest import (
    CORRUPT_STL,
    CUBE_STL,
    OPEN_BOX_STL,
    post_design,
    stored_files,
)

GCODE = b"; tiny\nG28\nG1 X10 Y10 Z0.2 F3000\nG1 X20 E1\n"


async def test_member_creates_lists_searches_and_gets_a_design(
    client: httpx.AsyncClient, member: dict[str, str], bracket_dir: Path
) -> None:
    scad = (bracket_dir / "l-bracket.scad").read_bytes()
    resp = await post_design(
        client,
        member,
        [("l-bracket.scad", scad), ("part.gcode", GCODE)],
        title="Parametric L-bracket",
        description="A mounting bracket with three holes",
        licence="cern-ohl-s-2.0",
        authors=["Ana Maker", "Bo Builder"],
        tags="bracket, Mounting",
        source_url="https://example.org/l-bracket",
        version="1.0.0",
    )
    assert resp.status_code == 201, resp.text
    design = resp.json()
    assert design["licence"] == "CERN-OHL-S-2.0"  # normalised SPDX spelling
    assert design["authors"] == ["Ana Maker", "Bo Builder"]
    assert design["tags"] == ["bracket", "mounting"]
    assert design["licence_flags"] == {"nd": False, "nc": False}
    by_name = {f["name"]: f for f in design["files"]}
    assert by_name["l-bracket.scad"]["kind"] == "scad"
    assert by_name["l-bracket.scad"]["analysis"] == {"parametric": True, "parameters": 4}
    assert by_name["l-bracket.scad"]["sha256"] == hashlib.sha256(scad).hexdigest()
    assert by_name["part.gcode"]["analysis"]["process"] == "fdm"
    attribution = design["attribution"]
    assert attribution["licence"] == "CERN-OHL-S-2.0"
    assert attribution["authors"] == ["Ana Maker", "Bo Builder"]
    assert attribution["source_url"] == "https://example.org/l-bracket"
    assert attribution["content_hash"] == design["content_hash"]
    assert "Ana Maker" in attribution["text"]

    other = await post_design(client, member, [("cube.gcode", GCODE + b"G1 X1\n")], title="Cube")
    assert other.status_code == 201

    listed = (await client.get("/api/v1/designs", headers=member)).json()
    assert [d["title"] for d in listed] == ["Cube", "Parametric L-bracket"]
    for q in ("bracket", "BO BUILDER", "cern-ohl", "mounting holes", "three"):
        found = (await client.get("/api/v1/designs", params={"q": q}, headers=member)).json()
        assert [d["id"] for d in found] == [design["id"]], q
    none = await client.get("/api/v1/designs", params={"q": "bracket cube"}, headers=member)
    assert none.json() == []
    literal = await client.get("/api/v1/designs", params={"q": "%"}, headers=member)
    assert literal.json() == []  # LIKE wildcards are searched as text

    got = await client.get(f"/api/v1/designs/{design['id']}", headers=member)
    assert got.status_code == 200
    assert got.json()["content_hash"] == design["content_hash"]
    assert (await client.get("/api/v1/designs/9999", headers=member)).status_code == 404
    assert (await client.get("/api/v1/designs")).status_code == 401

    file_id = by_name["l-bracket.scad"]["id"]
    download = await client.get(f"/api/v1/designs/{design['id']}/files/{file_id}", headers=member)
    assert download.status_code == 200
    assert download.content == scad
    assert "l-bracket.scad" in download.headers["content-disposition"]
    missing = await client.get(f"/api/v1/designs/{design['id']}/files/9999", headers=member)
    assert missing.status_code == 404


async def test_content_hash_is_stable_and_the_same_files_find_the_existing_design(
    client: httpx.AsyncClient, member: dict[str, str], operator: dict[str, str], settings: Settings
) -> None:
    files = [("a.gcode", GCODE), ("b.scad", b"cube(10);\n")]
    first = await post_design(client, member, files, title="First")
    assert first.status_code == 201
    expected = content_hash(
        [
            ("a.gcode", hashlib.sha256(GCODE).hexdigest()),
            ("b.scad", hashlib.sha256(b"cube(10);\n").hexdigest()),
        ]
    )
    assert first.json()["content_hash"] == expected
    before = stored_files(settings.upload_dir)

    again = await post_design(client, operator, list(reversed(files)), title="Other title")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["title"] == "First"
    assert stored_files(settings.upload_dir) == before  # the second copies were discarded

    renamed = await post_design(client, member, [("c.gcode", GCODE), files[1]], title="Renamed")
    assert renamed.status_code == 201
    assert renamed.json()["content_hash"] != expected
    by_hash = await client.get("/api/v1/designs", params={"content_hash": expected}, headers=member)
    assert [d["id"] for d in by_hash.json()] == [first.json()["id"]]


async def test_unknown_spdx_id_is_refused_naming_it_and_nothing_is_stored(
    client: httpx.AsyncClient, member: dict[str, str], settings: Settings
) -> None:
    resp = await post_design(
        client, member, [("a.gcode", GCODE)], licence="MIT OR Made-Up-License-9.9"
    )
    assert resp.status_code == 422
    assert "Made-Up-License-9.9" in resp.json()["detail"]
    assert resp.json()["unknown"] == ["Made-Up-License-9.9"]
    broken = await post_design(client, member, [("a.gcode", GCODE)], licence="MIT OR")
    assert broken.status_code == 422
    assert stored_files(settings.upload_dir) == []


@pytest.mark.parametrize(
    ("files", "form", "needle"),
    [
        ([("notes.txt", b"hello")], {}, "notes.txt"),
        ([("a.gcode", GCODE), ("a.gcode", GCODE + b"G1\n")], {}, "share the name"),
        ([("a.gcode", b"")], {}, "empty"),
        ([("a.gcode", b"\x00\x01binary")], {}, "a.gcode"),
        ([("a.gcode", GCODE)], {"title": ""}, "title"),
        ([("a.gcode", GCODE)], {"source_url": "ftp://x"}, "source_url"),
        ([("a.gcode", GCODE)], {"derivative_of": "not-a-hash"}, "derivative_of"),
        ([("a.gcode", GCODE)], {"derivative_of": "4242"}, "4242"),
        ([("a.scad", b"\xff\xfe cube();")], {}, "UTF-8"),
    ],
)
async def test_bad_designs_are_refused_and_leave_nothing_behind(
    client: httpx.AsyncClient,
    member: dict[str, str],
    settings: Settings,
    files: list[tuple[str, bytes]],
    form: dict[str, str],
    needle: str,
) -> None:
    resp = await post_design(client, member, files, **form)
    assert resp.status_code == 422, resp.text
    assert needle in resp.text
    assert stored_files(settings.upload_dir) == []
    assert (await client.get("/api/v1/designs", headers=member)).json() == []


async def test_a_file_over_the_upload_limit_is_refused(
    client: httpx.AsyncClient, member: dict[str, str], settings: Settings
) -> None:
    big = b"G1 X1\n" * (settings.max_upload_bytes // 6 + 10)
    resp = await post_design(client, member, [("big.gcode", big)])
    assert resp.status_code == 413
    assert stored_files(settings.upload_dir) == []


async def test_derivatives_name_their_parent(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    parent = (await post_design(client, member, [("a.gcode", GCODE)])).json()
    child = await post_design(client, member, [("b.gcode", GCODE)], derivative_of=str(parent["id"]))
    assert child.json()["derivative_of"] == str(parent["id"])
    by_hash = await post_design(
        client, member, [("c.gcode", GCODE)], derivative_of=parent["content_hash"].upper()
    )
    assert by_hash.json()["derivative_of"] == parent["content_hash"]


async def test_meshes_are_analysed_and_corrupt_ones_refused(
    client: httpx.AsyncClient, member: dict[str, str], settings: Settings
) -> None:
    good = await post_design(client, member, [("cube.stl", CUBE_STL)])
    assert good.status_code == 201, good.text
    cube = good.json()["files"][0]["analysis"]
    assert cube["watertight"] is True

    open_box = await post_design(client, member, [("box.stl", OPEN_BOX_STL)])
    assert open_box.status_code == 201, open_box.text
    assert open_box.json()["files"][0]["analysis"]["watertight"] is False

    before = stored_files(settings.upload_dir)
    corrupt = await post_design(client, member, [("broken.stl", CORRUPT_STL)])
    assert corrupt.status_code == 422
    assert "broken.stl" in corrupt.json()["detail"]
    assert stored_files(settings.upload_dir) == before


async def test_parameters_schema_range_and_nd_licence(
    client: httpx.AsyncClient, member: dict[str, str], bracket_dir: Path
) -> None:
    scad = (bracket_dir / "l-bracket.scad").read_bytes()
    design = (await post_design(client, member, [("l-bracket.scad", scad)])).json()
    schema = (await client.get(f"/api/v1/designs/{design['id']}/parameters", headers=member)).json()
    assert schema["nd"] is False
    params = {p["name"]: p for p in schema["parameters"]}
    assert list(params) == ["width", "length", "thickness", "hole_d"]
    assert (params["width"]["min"], params["width"]["step"], params["width"]["max"]) == (10, 1, 60)
    assert params["width"]["group"] == "Size"
    assert [o["value"] for o in params["hole_d"]["options"]] == [3, 4, 5, 6, 8]

    url = f"/api/v1/designs/{design['id']}/parameters"
    ok = await client.post(url, json={"parameters": {"width": "30"}}, headers=member)
    assert ok.status_code == 200, ok.text
    assert ok.json()["values"] == {"width": 30, "length": 40, "thickness": 4, "hole_d": 5}
    assert ok.json()["changed"] == ["width"]

    too_wide = await client.post(url, json={"parameters": {"width": 61}}, headers=member)
    assert too_wide.status_code == 422
    body = too_wide.json()
    assert body["parameter"] == "width"
    assert body["allowed"] == {"min": 10, "max": 60, "step": 1}
    assert "width" in body["detail"]
    assert "10 to 60" in body["detail"]
    not_listed = await client.post(url, json={"parameters": {"hole_d": 7}}, headers=member)
    assert not_listed.status_code == 422
    assert not_listed.json()["allowed"] == {"options": [3, 4, 5, 6, 8]}
    unknown = await client.post(url, json={"parameters": {"depth": 1}}, headers=member)
    assert unknown.status_code == 422

    nd = (
        await post_design(
            client,
            member,
            [("nd.scad", scad + b"\n// nd copy\n")],
            title="No derivatives bracket",
            licence="CC-BY-ND-4.0",
        )
    ).json()
    assert nd["licence_flags"] == {"nd": True, "nc": False}
    assert nd["attribution"]["nd"] is True
    nd_url = f"/api/v1/designs/{nd['id']}/parameters"
    refused = await client.post(nd_url, json={"parameters": {"width": 30}}, headers=member)
    assert refused.status_code == 409
    assert "no-derivatives" in refused.json()["detail"]
    assert "CC-BY-ND-4.0" in refused.json()["detail"]
    as_published = await client.post(nd_url, json={"parameters": {"width": 20}}, headers=member)
    assert as_published.status_code == 200
    assert as_published.json()["changed"] == []


async def test_non_commercial_licences_are_flagged(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    nc = await post_design(client, member, [("a.gcode", GCODE)], licence="CC-BY-NC-SA-4.0")
    assert nc.json()["licence_flags"] == {"nd": False, "nc": True}
    either = await post_design(client, member, [("b.gcode", GCODE)], licence="CC-BY-NC-4.0 OR MIT")
    assert either.json()["licence_flags"] == {"nd": False, "nc": False}  # MIT may be chosen
