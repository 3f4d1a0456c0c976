"""OKH import: manifests with files, zips, and archives that try to hurt the server."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import httpx
import pytest

from microfactory.config import Settings
from tests.designs.conftest import post_design, stored_files

IMPORT = "/api/v1/designs/import"


def bracket_files(bracket_dir: Path) -> dict[str, bytes]:
    """Return the sample's manifest and design files."""
    return {
        name: (bracket_dir / name).read_bytes()
        for name in ("okh.yml", "l-bracket.scad", "l-bracket.stl")
    }


def make_zip(entries: dict[str, bytes], *, level: int = 6) -> bytes:
    """Return a zip archive of these entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buf.getvalue()


async def import_files(
    client: httpx.AsyncClient, headers: dict[str, str], files: dict[str, bytes]
) -> httpx.Response:
    """Post files to the OKH import endpoint."""
    return await client.post(
        IMPORT,
        files=[("files", (n, d, "application/octet-stream")) for n, d in files.items()],
        headers=headers,
    )


async def assert_nothing_stored(
    client: httpx.AsyncClient, headers: dict[str, str], settings: Settings
) -> None:
    """Check that a refused import left no file and no design."""
    assert stored_files(settings.upload_dir) == []
    assert (await client.get("/api/v1/designs", headers=headers)).json() == []


async def test_import_the_sample_manifest_with_its_files(
    client: httpx.AsyncClient,
    operator: dict[str, str],
    member: dict[str, str],
    bracket_dir: Path,
    settings: Settings,
) -> None:
    files = bracket_files(bracket_dir)
    assert (await import_files(client, member, files)).status_code == 403

    resp = await import_files(client, operator, files)
    assert resp.status_code == 201, resp.text
    design = resp.json()
    assert design["title"] == "Parametric L-bracket"
    assert design["licence"] == "CERN-OHL-S-2.0"
    assert design["authors"] == ["microfactory sample designs"]
    assert design["version"] == "1.0.0"
    assert design["tags"] == ["bracket", "mounting", "fixture"]
    assert "L-shaped mounting bracket" in design["description"]
    assert sorted(f["name"] for f in design["files"]) == ["l-bracket.scad", "l-bracket.stl"]
    stl = next(f for f in design["files"] if f["kind"] == "stl")
    assert stl["analysis"]["watertight"] is True
    assert stl["analysis"]["bbox_mm"]["max_x"] == pytest.approx(40.0)
    assert design["okh"]["documentation_licence"] == "CC-BY-SA-4.0"
    assert design["okh"]["manifest"]["name"] == "L-bracket"
    assert design["attribution"]["licence"] == "CERN-OHL-S-2.0"
    assert len(stored_files(settings.upload_dir)) == 2  # the manifest itself is not a file

    # The same files uploaded by hand name the same design: content addressing.
    plain = await post_design(
        client,
        member,
        [(n, d) for n, d in files.items() if n != "okh.yml"],
        title="Another name",
    )
    assert plain.status_code == 200
    assert plain.json()["id"] == design["id"]


async def test_import_a_zip_with_the_manifest_in_a_folder(
    client: httpx.AsyncClient, operator: dict[str, str], bracket_dir: Path, settings: Settings
) -> None:
    files = bracket_files(bracket_dir)
    archive = make_zip(
        {f"l-bracket-main/{n}": d for n, d in files.items()}
        | {"l-bracket-main/README.md": b"# docs\n", "l-bracket-main/docs/": b""}
    )
    resp = await import_files(client, operator, {"l-bracket.zip": archive})
    assert resp.status_code == 201, resp.text
    first = resp.json()
    assert sorted(f["name"] for f in first["files"]) == ["l-bracket.scad", "l-bracket.stl"]
    assert len(stored_files(settings.upload_dir)) == 2  # the zip itself is gone

    again = await import_files(client, operator, {"again.zip": archive})
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert len(stored_files(settings.upload_dir)) == 2


async def test_import_an_okh_losh_toml_manifest(
    client: httpx.AsyncClient, operator: dict[str, str], bracket_dir: Path
) -> None:
    manifest = b"""
okhv = "OKH-LOSHv1.0"
name = "Bracket (LOSH)"
repo = "https://example.org/bracket"
version = "2.1"
license = "CC-BY-SA-4.0"
licensor = "Jo Designer"
function = "Holds a shelf."
source = ["src/l-bracket.scad"]
"""
    archive = make_zip(
        {"okh.toml": manifest, "src/l-bracket.scad": (bracket_dir / "l-bracket.scad").read_bytes()}
    )
    resp = await import_files(client, operator, {"b.zip": archive})
    assert resp.status_code == 201, resp.text
    design = resp.json()
    assert design["title"] == "Bracket (LOSH)"
    assert design["licence"] == "CC-BY-SA-4.0"
    assert design["authors"] == ["Jo Designer"]
    assert design["source_url"] == "https://example.org/bracket"
    assert design["description"] == "Holds a shelf."
    assert design["okh"]["format"] == "okh-losh"
    assert [f["name"] for f in design["files"]] == ["l-bracket.scad"]


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("okh.yml", b"title: x\nlicense: MIT\n")
        link = zipfile.ZipInfo("part.scad")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return buf.getvalue()


MANIFEST = b"title: Evil\nlicense: MIT\ndesign-files:\n  - path: part.scad\n"


@pytest.mark.parametrize(
    ("archive", "status", "needle"),
    [
        (make_zip({"okh.yml": MANIFEST, "part.scad": b"x", "../evil.scad": b"x"}), 422, "climbs"),
        (make_zip({"okh.yml": MANIFEST, "/etc/evil.scad": b"x"}), 422, "absolute"),
        (
            make_zip({"okh.yml": b"title: E\nlicense: MIT\ndesign-files: [{path: ../x.scad}]\n"}),
            422,
            "outside",
        ),
        (_symlink_zip(), 422, "symbolic link"),
        # 100 MB of zeros compress to ~100 KB: refused before a byte is unpacked.
        (
            make_zip({"okh.yml": MANIFEST, "part.scad": b"\0" * (100 * 1024 * 1024)}, level=9),
            413,
            "zip bomb",
        ),
        (make_zip({"okh.yml": MANIFEST}), 422, "not in the archive"),
        (make_zip({"part.scad": b"cube();"}), 422, "no OKH manifest"),
        (make_zip({"okh.yml": b"title: x\nlicense: Nope-1.0\n", "a.scad": b"x"}), 422, "Nope"),
        (make_zip({"okh.yml": b"[unclosed", "a.scad": b"x"}), 422, "not a valid manifest"),
        (b"PK\x03\x04 not really a zip", 422, "not a valid zip"),
    ],
    ids=[
        "traversal",
        "absolute",
        "manifest-traversal",
        "symlink",
        "bomb",
        "missing",
        "no-manifest",
        "licence",
        "bad-yaml",
        "not-zip",
    ],
)
async def test_unsafe_or_broken_archives_are_refused_and_nothing_is_stored(
    client: httpx.AsyncClient,
    operator: dict[str, str],
    settings: Settings,
    archive: bytes,
    status: int,
    needle: str,
) -> None:
    resp = await import_files(client, operator, {"upload.zip": archive})
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["detail"]
    await assert_nothing_stored(client, operator, settings)


async def test_a_bomb_spread_over_many_entries_is_refused_by_the_total(
    client: httpx.AsyncClient, operator: dict[str, str], settings: Settings
) -> None:
    # Each entry is under the 1 MiB ratio floor, but together they exceed the upload limit.
    entries = {f"p{i}.scad": b"\0" * (1024 * 1024) for i in range(3)}
    archive = make_zip({"okh.yml": b"title: x\nlicense: MIT\n", **entries}, level=9)
    resp = await import_files(client, operator, {"many.zip": archive})
    assert resp.status_code == 413
    assert "unpacks to" in resp.json()["detail"]
    await assert_nothing_stored(client, operator, settings)


async def test_a_manifest_naming_a_file_not_uploaded_is_refused(
    client: httpx.AsyncClient, operator: dict[str, str], bracket_dir: Path, settings: Settings
) -> None:
    files = bracket_files(bracket_dir)
    del files["l-bracket.stl"]
    resp = await import_files(client, operator, files)
    assert resp.status_code == 422
    assert "l-bracket.stl" in resp.json()["detail"]
    await assert_nothing_stored(client, operator, settings)
