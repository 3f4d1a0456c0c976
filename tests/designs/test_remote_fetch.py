"""The import's fetcher against a small hand-written peer: redirects, lying metadata, sizes.

The peer is Python's http.server on 127.0.0.1 answering fixed bytes, so each way another
shop could misbehave is exact; the full import against a real shop is test_import_remote.py.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from microfactory.config import Settings
from microfactory.designs.licences import redistribution_refusal
from microfactory.designs.storage import content_hash
from tests.designs.conftest import stored_files

SCAD = b"cube(4);\n"
SCAD_SHA = hashlib.sha256(SCAD).hexdigest()
GOOD_HASH = content_hash([("a.scad", SCAD_SHA)])


HOP = {
    "shop_url": "https://first.example",
    "shop_id": "first-shop-id",
    "source_url": f"https://first.example/api/v1/designs/by-hash/{GOOD_HASH}",
    "content_hash": GOOD_HASH,
    "fetched_at": "2026-11-01T10:00:00+00:00",
}


def _meta(**changes: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "content_hash": GOOD_HASH,
        "title": "Cube",
        "licence": "CC-BY-4.0",
        "authors": ["Ana"],
        "files": [{"path": "a.scad", "sha256": SCAD_SHA, "size": len(SCAD)}],
    }
    meta.update(changes)
    return meta


class Peer(ThreadingHTTPServer):
    """Answers GET paths from a dict of path -> (status, headers, body)."""

    routes: dict[str, tuple[int, dict[str, str], bytes]]


class _Handler(BaseHTTPRequestHandler):
    server: Peer

    def do_GET(self) -> None:
        status, headers, body = self.server.routes.get(self.path, (404, {}, b'{"detail":"no"}'))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    server = Peer(("127.0.0.1", 0), _Handler)
    server.routes = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _base(peer: Peer) -> str:
    return f"http://127.0.0.1:{peer.server_address[1]}"


def _serve(peer: Peer, prefix: str, meta: dict[str, Any], file_body: bytes = SCAD) -> str:
    """Serve a design under a path prefix (a shop mounted below a path); return its URL."""
    url_path = f"{prefix}/api/v1/designs/by-hash/{GOOD_HASH}"
    peer.routes[url_path] = (200, {"Content-Type": "application/json"}, json.dumps(meta).encode())
    peer.routes[f"{url_path}/files/{SCAD_SHA}"] = (200, {}, file_body)
    return _base(peer) + url_path


@pytest.mark.parametrize(
    ("meta", "file_body", "needle"),
    [
        (_meta(content_hash="b" * 64), SCAD, "not the one asked"),
        (_meta(files=[{"path": "b.scad", "sha256": SCAD_SHA, "size": 9}]), SCAD, "hash to"),
        (_meta(files=[{"path": "../a.scad", "sha256": SCAD_SHA, "size": 9}]), SCAD, "plain name"),
        (_meta(licence="LicenseRef-Proprietary"), SCAD, "no right to redistribute"),
        (_meta(licence="NOASSERTION"), SCAD, "no right to redistribute"),
        (_meta(title=None), SCAD, "did not answer design metadata"),
        (_meta(), SCAD + b"// longer\n", "hash mismatch in a.scad"),
        (
            _meta(provenance=[dict(HOP, fetched_at="2026-11-01T10:00:00")]),  # no time zone
            SCAD,
            "provenance chain is malformed",
        ),
        (_meta(), b"cube(5);\n", "hash mismatch in a.scad"),
    ],
)
async def test_a_peer_that_lies_is_refused_and_nothing_is_kept(
    client: httpx.AsyncClient,
    operator: dict[str, str],
    settings: Settings,
    peer: Peer,
    meta: dict[str, Any],
    file_body: bytes,
    needle: str,
) -> None:
    url = _serve(peer, f"/case{abs(hash(needle + json.dumps(meta)))}", meta, file_body)
    resp = await client.post("/api/v1/designs/import-remote", json={"url": url}, headers=operator)
    assert resp.status_code == 422, resp.text
    assert needle in resp.json()["detail"]
    assert (await client.get("/api/v1/designs", headers=operator)).json() == []
    assert stored_files(settings.upload_dir) == []


async def test_the_provenance_chain_travels_on_with_this_hop_appended(
    client: httpx.AsyncClient, operator: dict[str, str], peer: Peer
) -> None:
    url = _serve(peer, "/second", _meta(provenance=[HOP]))
    resp = await client.post("/api/v1/designs/import-remote", json={"url": url}, headers=operator)
    assert resp.status_code == 201, resp.text
    first, second = resp.json()["provenance"]
    assert first == {**HOP, "fetched_at": "2026-11-01T10:00:00Z"}
    assert second["shop_url"] == _base(peer) + "/second"
    assert second["source_url"] == url
    assert second["shop_id"] is None


async def test_redirects_are_followed_only_within_the_same_origin(
    client: httpx.AsyncClient, operator: dict[str, str], peer: Peer
) -> None:
    good = _serve(peer, "/shop", _meta())
    elsewhere = f"http://localhost:{peer.server_address[1]}/shop/api/v1/designs/by-hash/{GOOD_HASH}"
    old = f"/old/api/v1/designs/by-hash/{GOOD_HASH}"
    peer.routes[old] = (302, {"Location": elsewhere}, b"")
    away = await client.post(
        "/api/v1/designs/import-remote", json={"url": _base(peer) + old}, headers=operator
    )
    assert away.status_code == 422
    assert "redirects to another host" in away.json()["detail"]

    moved = f"/moved/api/v1/designs/by-hash/{GOOD_HASH}"
    peer.routes[moved] = (301, {"Location": good.removeprefix(_base(peer))}, b"")
    # The metadata redirects within the origin; the files are fetched from the moved shop's
    # base, which serves them too.
    peer.routes[f"{moved}/files/{SCAD_SHA}"] = (200, {}, SCAD)
    ok = await client.post(
        "/api/v1/designs/import-remote", json={"url": _base(peer) + moved}, headers=operator
    )
    assert ok.status_code == 201, ok.text
    assert ok.json()["provenance"][0]["shop_url"] == _base(peer) + "/moved"


async def test_oversized_answers_are_cut_off(
    client: httpx.AsyncClient, operator: dict[str, str], settings: Settings, peer: Peer
) -> None:
    big = settings.max_upload_bytes + 1
    url = _serve(peer, "/big", _meta(files=[{"path": "a.scad", "sha256": SCAD_SHA, "size": big}]))
    listed = await client.post("/api/v1/designs/import-remote", json={"url": url}, headers=operator)
    assert listed.status_code == 413
    assert "upload limit" in listed.json()["detail"]
    huge = f"/huge/api/v1/designs/by-hash/{GOOD_HASH}"
    peer.routes[huge] = (200, {}, b" " * (1024 * 1024 + 1))
    resp = await client.post(
        "/api/v1/designs/import-remote", json={"url": _base(peer) + huge}, headers=operator
    )
    assert resp.status_code == 413


@pytest.mark.parametrize(
    ("licence", "allowed"),
    [
        ("MIT", True),
        ("CC-BY-4.0", True),
        ("CC-BY-NC-ND-4.0", True),  # verbatim, non-commercial sharing is allowed
        ("CERN-OHL-S-2.0", True),
        ("GPL-3.0-or-later WITH Classpath-exception-2.0", True),
        ("LicenseRef-All-Rights-Reserved OR MIT", True),  # a choice: MIT allows it
        ("LicenseRef-All-Rights-Reserved", False),
        ("CC-BY-4.0 AND LicenseRef-Proprietary", False),
        ("NONE", False),
        ("Made-Up-1.0", False),
        ("MIT OR", False),
    ],
)
def test_redistribution_rights_of_licences(licence: str, allowed: bool) -> None:
    refusal = redistribution_refusal(licence)
    assert (refusal is None) is allowed, refusal
