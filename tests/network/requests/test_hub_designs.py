"""Hubs index public designs by content hash, from shops' signed design lists (in process).

The app under test is an open hub; the shops are keys made here, reporting and listing
their designs exactly as a shop does.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import pytest

from microfactory.config import Settings
from microfactory.network.hub import designs as hub_designs
from microfactory.network.requests import signing
from tests.network.hub.conftest import Shop

JOSE = {"Content-Type": "application/jose"}
HASH_A, HASH_B = "ab" * 32, "cd" * 32


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=db_url, log_json=False,
        run_supervisors=False, hub=True, hub_open=True, network_publish=True,
    )  # fmt: skip


def _list(shop: Shop, designs: list[dict[str, str]], *, sequence: int) -> str:
    issued, expires = signing.times(dt.datetime.now(dt.UTC), 3600)
    payload: dict[str, Any] = {
        "type": hub_designs.DESIGNS_TYPE, "shop_id": shop.shop_id, "key": shop.public_jwk(),
        "url": "http://127.0.0.1:8001", "sequence": sequence, "issuedAt": issued,
        "expiresAt": expires, "designs": designs,
    }  # fmt: skip
    return shop.sign(payload)


async def test_a_hub_answers_which_shops_hold_a_design_from_their_signed_lists(
    client: httpx.AsyncClient,
) -> None:
    gent, brussels = Shop("Fablab Gent"), Shop("Brussels Makers")
    clip = {"hash": HASH_A, "title": "Cable clip", "licence": "CC-BY-4.0"}
    # A shop the hub has not pinned (no report yet) is not taken at its word.
    early = await client.post("/api/v1/network/designs", content=_list(gent, [clip], sequence=1),
                              headers=JOSE)  # fmt: skip
    assert early.status_code == 401, early.text
    for shop in (gent, brussels):
        pushed = await client.post("/api/v1/network/reports", content=shop.jws(), headers=JOSE)
        assert pushed.status_code == 202, pushed.text

    first = _list(gent, [clip, {"hash": HASH_B, "title": "Hook", "licence": "CC0-1.0"}],
                  sequence=100)  # fmt: skip
    taken = await client.post("/api/v1/network/designs", content=first, headers=JOSE)
    assert taken.status_code == 202, taken.text
    assert taken.json() == {"shop_id": gent.shop_id, "sequence": 100, "designs": 2}
    other = _list(brussels, [clip], sequence=5)
    assert (await client.post("/api/v1/network/designs", content=other, headers=JOSE)).is_success

    held = await client.get(f"/api/v1/network/designs/{HASH_A}")
    assert held.status_code == 200, held.text
    assert sorted(s["name"] for s in held.json()["shops"]) == ["Brussels Makers", "Fablab Gent"]
    assert {s["title"] for s in held.json()["shops"]} == {"Cable clip"}

    # The list replaces the shop's holdings; an old list sent again is a replay.
    assert (
        await client.post("/api/v1/network/designs", content=first, headers=JOSE)
    ).status_code == 409
    newer = _list(gent, [{"hash": HASH_B, "title": "Hook", "licence": "CC0-1.0"}], sequence=101)
    assert (await client.post("/api/v1/network/designs", content=newer, headers=JOSE)).is_success
    held = (await client.get(f"/api/v1/network/designs/{HASH_A}")).json()
    assert [s["name"] for s in held["shops"]] == ["Brussels Makers"]
    assert [
        s["name"] for s in (await client.get(f"/api/v1/network/designs/{HASH_B}")).json()["shops"]
    ] == ["Fablab Gent"]

    # Signed by another key claiming Gent's id: refused; a bad hash: 422; not a JWS: 400.
    impostor = Shop("Impostor")
    forged = impostor.sign(
        {**signing.verify(newer, kind=hub_designs.DESIGNS_TYPE, to=None).payload,
         "sequence": 102}
    )  # fmt: skip
    assert (
        await client.post("/api/v1/network/designs", content=forged, headers=JOSE)
    ).status_code == 401
    assert (await client.get("/api/v1/network/designs/nothex")).status_code == 422
    assert (
        await client.post("/api/v1/network/designs", content=b"x", headers=JOSE)
    ).status_code == 400
