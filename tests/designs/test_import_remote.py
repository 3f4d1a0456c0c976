"""Importing a design from another shop by content hash, against a real second shop.

The source shop is a real `microfactory serve` process on 127.0.0.1 with its own SQLite
database, publishing to the network; it holds public designs (one per case). The receiving
shop is the in-process app on SQLite and PostgreSQL, whose import fetches over real HTTP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from microfactory.config import Settings
from tests.conftest import UserFactory
from tests.designs.conftest import CUBE_STL, stored_files
from tests.designs.test_design_pages import browser_login
from tests.peers.microfactory_server import MicrofactoryServer, user_commands

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SCAD = b"width = 20; // [10:1:60]\ncube([width, 10, 5]);\n"
TAMPERED_SCAD = b"size = 7;\ncube(size);\n"


class SourceShop(MicrofactoryServer):
    """A second shop: `microfactory serve` with its own data folder and SQLite database."""

    def __init__(self, root: Path) -> None:
        super().__init__(
            root, "source shop",
            MICROFACTORY_RUN_SUPERVISORS="false", MICROFACTORY_NETWORK_PUBLISH="true",
        )  # fmt: skip
        self.base = self.url
        self.data_dir = self.dir / "data"
        self.designs: dict[str, dict[str, Any]] = {}

    def cli(self, *args: str, stdin: str = "") -> str:
        return super().cli(*args, stdin=stdin).strip()

    def start(self) -> None:
        super().start()  # migrates its database first
        self.wait_up()

    def add(self, token: str, key: str, files: list[tuple[str, bytes]], **form: Any) -> None:
        data: dict[str, Any] = {
            "title": key,
            "licence": "CC-BY-4.0",
            "visibility": "public",
            "authors": ["Ana Maker", "Bo Builder"],
            "source_url": f"https://example.org/{key}",
        }
        data.update(form)
        resp = httpx.post(
            f"{self.base}/api/v1/designs",
            files=[("files", (n, c, "application/octet-stream")) for n, c in files],
            data=data,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert resp.status_code == 201, resp.text
        self.designs[key] = resp.json()

    def design_url(self, key: str) -> str:
        return f"{self.base}/api/v1/designs/by-hash/{self.designs[key]['content_hash']}"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourceShop]:
    shop = SourceShop(tmp_path_factory.mktemp("source-shop"))
    shop.start()  # migrates its database first
    try:
        made = shop.cli_batch(*user_commands("ana", "member", "ana-source-pass"))
        token = made[-1].strip().splitlines()[-1].strip()
        shop.add(token, "bracket", [("bracket.scad", SCAD), ("cube.stl", CUBE_STL)])
        shop.add(token, "nd", [("nd.scad", SCAD + b"// nd\n")], licence="CC-BY-ND-4.0")
        shop.add(
            token, "closed", [("closed.scad", SCAD + b"// closed\n")],
            licence="LicenseRef-All-Rights-Reserved",
        )  # fmt: skip
        shop.add(token, "tampered", [("tampered.scad", TAMPERED_SCAD)])
        shop.add(token, "shop-only", [("mine.scad", SCAD + b"// mine\n")], visibility="shop")
        # Change the stored copy on the source's disk: same size, other bytes. The source
        # still lists the SHA-256 of what was uploaded.
        on_disk = [
            p for p in stored_files(shop.data_dir / "files") if p.read_bytes() == TAMPERED_SCAD
        ]
        assert len(on_disk) == 1
        on_disk[0].write_bytes(TAMPERED_SCAD.replace(b"7", b"9"))
        yield shop
    finally:
        shop.stop()


async def _import(
    client: httpx.AsyncClient, headers: dict[str, str], **body: Any
) -> httpx.Response:
    return await client.post("/api/v1/designs/import-remote", json=body, headers=headers)


async def _count(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    return len((await client.get("/api/v1/designs", headers=headers)).json())


async def test_import_verifies_and_keeps_attribution_and_provenance_once(
    client: httpx.AsyncClient, operator: dict[str, str], source: SourceShop, make_user: UserFactory
) -> None:
    original = source.designs["bracket"]
    resp = await _import(client, operator, url=source.design_url("bracket"))
    assert resp.status_code == 201, resp.text
    design = resp.json()
    assert design["content_hash"] == original["content_hash"]
    assert design["licence"] == "CC-BY-4.0"
    assert design["authors"] == ["Ana Maker", "Bo Builder"]
    assert design["source_url"] == "https://example.org/bracket"
    assert design["attribution"]["authors"] == ["Ana Maker", "Bo Builder"]
    assert design["visibility"] == "shop"  # nothing is republished without a choice
    assert {(f["name"], f["sha256"], f["size_bytes"]) for f in design["files"]} == {
        ("bracket.scad", hashlib.sha256(SCAD).hexdigest(), len(SCAD)),
        ("cube.stl", hashlib.sha256(CUBE_STL).hexdigest(), len(CUBE_STL)),
    }
    [hop] = design["provenance"]
    assert hop["shop_url"] == source.base
    assert hop["source_url"] == source.design_url("bracket")
    assert hop["content_hash"] == original["content_hash"]
    assert hop["fetched_at"]
    # The bytes arrived: the receiving shop serves the same file.
    scad_id = next(f["id"] for f in design["files"] if f["name"] == "bracket.scad")
    got = await client.get(f"/api/v1/designs/{design['id']}/files/{scad_id}", headers=operator)
    assert got.content == SCAD
    # By hash here, the chain travels on: the next shop would see where it came from.
    meta = (
        await client.get(f"/api/v1/designs/by-hash/{design['content_hash']}", headers=operator)
    ).json()
    assert meta["provenance"][0]["shop_url"] == source.base

    # The same hash again, through the base URL and hash form: the design held, not a copy.
    again = await _import(client, operator, url=source.base, hash=original["content_hash"])
    assert again.status_code == 200, again.text
    assert again.json()["id"] == design["id"]
    assert len(again.json()["provenance"]) == 1
    assert await _count(client, operator) == 1

    # The page shows the hash and where the design came from.
    user, _ = await make_user("member")
    await browser_login(client, user.username)
    page = (await client.get(f"/designs/{design['id']}")).text
    assert original["content_hash"] in page
    assert f'href="{source.base}"' in page


async def test_a_tampered_file_is_refused_with_the_mismatch_named_and_nothing_stored(
    client: httpx.AsyncClient, operator: dict[str, str], source: SourceShop, settings: Settings
) -> None:
    resp = await _import(client, operator, url=source.design_url("tampered"))
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert "hash mismatch in tampered.scad" in detail
    assert hashlib.sha256(TAMPERED_SCAD).hexdigest() in detail
    assert resp.json()["file"] == "tampered.scad"
    assert await _count(client, operator) == 0
    assert stored_files(settings.upload_dir) == []


async def test_a_design_without_redistribution_rights_cannot_be_imported(
    client: httpx.AsyncClient, operator: dict[str, str], source: SourceShop, settings: Settings
) -> None:
    resp = await _import(client, operator, url=source.design_url("closed"))
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert "LicenseRef-All-Rights-Reserved" in detail
    assert "no right to redistribute" in detail
    assert await _count(client, operator) == 0
    assert stored_files(settings.upload_dir) == []


async def test_an_imported_nd_design_is_read_only(
    client: httpx.AsyncClient, operator: dict[str, str], member: dict[str, str], source: SourceShop
) -> None:
    resp = await _import(client, operator, url=source.design_url("nd"))
    assert resp.status_code == 201, resp.text
    design = resp.json()
    assert design["licence"] == "CC-BY-ND-4.0"
    assert design["licence_flags"]["nd"] is True
    # No Customizer change...
    check = await client.post(
        f"/api/v1/designs/{design['id']}/parameters",
        json={"parameters": {"width": 30}},
        headers=member,
    )
    assert check.status_code == 409
    assert "no-derivatives" in check.json()["detail"]
    job = await client.post(
        "/api/v1/jobs",
        json={"design_id": design["id"], "parameters": {"width": 30}},
        headers=member,
    )
    assert job.status_code == 409
    # ...and no design recorded as derived from it.
    derived = await client.post(
        "/api/v1/designs",
        files=[("files", ("wider.scad", SCAD.replace(b"20", b"30"), "text/plain"))],
        data={"title": "Wider", "licence": "CC-BY-4.0", "derivative_of": design["content_hash"]},
        headers=member,
    )
    assert derived.status_code == 409, derived.text
    assert "no-derivatives" in derived.json()["detail"]
    # As published, it can still be checked (and made).
    same = await client.post(
        f"/api/v1/designs/{design['id']}/parameters", json={"parameters": {}}, headers=member
    )
    assert same.status_code == 200


async def test_bad_sources_are_refused_clearly(
    client: httpx.AsyncClient,
    operator: dict[str, str],
    member: dict[str, str],
    source: SourceShop,
) -> None:
    hidden = await _import(client, operator, url=source.design_url("shop-only"))
    assert hidden.status_code == 422
    assert "answered 404" in hidden.json()["detail"]
    cases = [
        ({"url": "ftp://example.org/x"}, "http"),
        ({"url": f"{source.base}/api/v1/designs/by-hash/ABC"}, "64 lower-case hex"),
        ({"url": source.base}, "hash"),
        ({"url": f"http://169.254.169.254/api/v1/designs/by-hash/{'a' * 64}"}, "169.254"),
        ({"url": f"http://user:pw@127.0.0.1/api/v1/designs/by-hash/{'a' * 64}"}, "credentials"),
        ({"shop": "abc", "hash": "a" * 64}, "no hub is configured"),
        ({"shop": "abc"}, "hash"),
        ({}, "url"),
        ({"url": source.base, "hash": "nope"}, "hash"),
    ]
    for body, needle in cases:
        resp = await _import(client, operator, **body)
        assert resp.status_code == 422, (body, resp.text)
        assert needle in str(resp.json()["detail"]), (body, resp.json())
    refused = await _import(client, member, url=source.design_url("bracket"))
    assert refused.status_code == 403
    assert await _count(client, operator) == 0
