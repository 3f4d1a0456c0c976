"""A hub takes signed reports, refuses forged, replayed, expired, future and unknown-key ones."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import rfc8785
from joserfc import jws
from jwcrypto import jwk as jw_jwk
from jwcrypto import jws as jw_jws

from tests.network.hub.conftest import JOSE, Shop, tamper

Client = httpx.AsyncClient


async def push(client: Client, token: str) -> httpx.Response:
    return await client.post("/api/v1/network/reports", content=token, headers=JOSE)


async def test_an_open_hub_takes_a_report_and_serves_it_unchanged(
    client: Client, open_hub: Any
) -> None:
    shop = Shop("Fablab Gent")
    token = shop.jws()
    resp = await push(client, token)
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"shop_id": shop.shop_id, "sequence": 1, "status": "accepted"}

    listed = (await client.get("/api/v1/network/shops")).json()["shops"]
    assert [(s["shop_id"], s["name"], s["expired"]) for s in listed] == [
        (shop.shop_id, "Fablab Gent", False)
    ]
    assert listed[0]["processes"] == ["fdm_printing"]
    assert listed[0]["materials"] == ["PETG", "PLA"]

    page = (await client.get("/api/v1/network/reports")).json()
    assert [r["jws"] for r in page["reports"]] == [token]  # byte for byte
    assert page["next"] == page["reports"][0]["cursor"] + 1
    later = (await client.get("/api/v1/network/reports", params={"since": page["next"]})).json()
    assert later == {"reports": [], "next": page["next"]}

    # The stored report verifies with an independent JOSE library, and not after one byte.
    key = jw_jwk.JWK(**shop.public_jwk())
    stored = jw_jws.JWS()
    stored.deserialize(page["reports"][0]["jws"])
    stored.allowed_algs = ["Ed25519", "EdDSA"]
    stored.verify(key)
    head, payload, sig = token.split(".")
    flipped = payload[:10] + ("A" if payload[10] != "A" else "B") + payload[11:]
    broken = jw_jws.JWS()
    broken.deserialize(f"{head}.{flipped}.{sig}")
    broken.allowed_algs = ["Ed25519", "EdDSA"]
    try:
        broken.verify(key)
    except jw_jws.InvalidJWSSignature:
        pass
    else:
        raise AssertionError("a changed payload byte still verified")


async def test_the_older_eddsa_name_is_accepted(client: Client, open_hub: Any) -> None:
    shop = Shop()
    resp = await push(client, shop.sign(shop.report(), alg="EdDSA"))
    assert resp.status_code == 202, resp.text


async def test_forged_reports_are_refused_401(client: Client, open_hub: Any) -> None:
    shop = Shop("Honest")
    assert (await push(client, shop.jws())).status_code == 202

    # A payload changed after signing (a better queue) no longer matches its signature.
    def shorter_queue(data: dict[str, Any]) -> None:
        data["live"]["sequence"] = 99
        data["okw"]["name"] = "Forged"

    forged = await push(client, tamper(shop.jws(), shorter_queue))
    assert forged.status_code == 401
    assert "signature" in forged.json()["detail"]

    # Someone else's key, claiming this shop's id: kid is not the thumbprint of that key.
    mallory = Shop()
    report = shop.report()
    report["key"] = mallory.public_jwk()
    resp = await push(client, shop.sign(report, key=mallory.key))
    assert resp.status_code == 401
    assert "thumbprint" in resp.json()["detail"]

    # The shop's own key in the payload, signed by another key.
    resp = await push(client, shop.sign(shop.report(), key=mallory.key))
    assert resp.status_code == 401
    names = [s["name"] for s in (await client.get("/api/v1/network/shops")).json()["shops"]]
    assert names == ["Honest"]


async def test_a_replay_is_refused_409(client: Client, open_hub: Any) -> None:
    shop = Shop()
    token = shop.jws()
    assert (await push(client, token)).status_code == 202
    again = await push(client, token)
    assert again.status_code == 409
    assert "replay" in again.json()["detail"]
    older = await push(client, shop.jws(sequence=1))
    assert older.status_code == 409
    assert (await push(client, shop.jws(sequence=5))).status_code == 202
    assert (await push(client, shop.jws(sequence=4))).status_code == 409
    # A shop may count in milliseconds since 1970: beyond 32 bits.
    ms = 1_764_633_600_000
    assert (await push(client, shop.jws(sequence=ms))).status_code == 202
    assert (await push(client, shop.jws(sequence=ms - 1))).status_code == 409


async def test_expired_and_future_reports_are_refused_422(client: Client, open_hub: Any) -> None:
    shop = Shop()
    now = dt.datetime.now(dt.UTC)
    expired = await push(client, shop.jws(issued=now - dt.timedelta(minutes=20), ttl_s=900))
    assert expired.status_code == 422
    assert "expired" in expired.json()["detail"]
    future = await push(client, shop.jws(issued=now + dt.timedelta(minutes=10)))
    assert future.status_code == 422
    assert "ahead" in future.json()["detail"]
    # Within the clock skew (120 s) a report from a slightly fast clock is taken.
    assert (await push(client, shop.jws(issued=now + dt.timedelta(seconds=30)))).status_code == 202


async def test_a_closed_hub_keeps_an_unknown_shop_pending_until_an_admin_approves(
    client: Client, admin: dict[str, str], member: dict[str, str]
) -> None:
    shop = Shop("Newcomer")
    resp = await push(client, shop.jws())
    assert resp.status_code == 202
    assert resp.json()["status"] == "pending"
    assert (await client.get("/api/v1/network/shops")).json()["shops"] == []
    assert (await client.get("/api/v1/network/reports")).json()["reports"] == []

    pins = (await client.get("/api/v1/network/hub/pins", headers=admin)).json()
    assert [(p["shop_id"], p["status"], p["waiting_report"]) for p in pins] == [
        (shop.shop_id, "pending", True)
    ]
    refused = await client.post(f"/api/v1/network/hub/pins/{shop.shop_id}/approve", headers=member)
    assert refused.status_code == 403

    ok = await client.post(f"/api/v1/network/hub/pins/{shop.shop_id}/approve", headers=admin)
    assert ok.status_code == 200
    assert ok.json()["status"] == "approved"
    # The report that waited is taken on approval.
    listed = (await client.get("/api/v1/network/shops")).json()["shops"]
    assert [s["name"] for s in listed] == ["Newcomer"]
    assert (await push(client, shop.jws())).json()["status"] == "accepted"

    revoked = await client.post(f"/api/v1/network/hub/pins/{shop.shop_id}/revoke", headers=admin)
    assert revoked.json()["status"] == "revoked"
    assert (await client.get("/api/v1/network/shops")).json()["shops"] == []
    after = await push(client, shop.jws())
    assert after.status_code == 403
    unknown = await client.post("/api/v1/network/hub/pins/nope/approve", headers=admin)
    assert unknown.status_code == 404


async def test_bad_bodies_get_400_with_a_message(client: Client, open_hub: Any) -> None:
    shop = Shop()
    for body in ("", "not a jws", "a.b.c", "a.b"):
        resp = await push(client, body)
        assert resp.status_code == 400, body
        assert resp.json()["detail"]
    wrong_type = await client.post("/api/v1/network/reports", json={"jws": shop.jws()})
    assert wrong_type.status_code == 400
    assert "application/jose" in wrong_type.json()["detail"]
    # Signed, but not the canonical (RFC 8785) form of the payload.
    loose = jws.serialize_compact(
        {"alg": "Ed25519", "kid": shop.shop_id},
        json.dumps(shop.report(), indent=2),
        shop.key,
        algorithms=["Ed25519"],
    )
    resp = await push(client, loose)
    assert resp.status_code == 400
    assert "RFC 8785" in resp.json()["detail"]
    # Numbers JSON does not have, signed: refused with a message, not a server error.
    canonical = rfc8785.dumps(shop.report())
    for odd in (b"NaN", b"1e400", b"-Infinity"):
        body = canonical.replace(b'"depth":0', b'"depth":' + odd, 1)
        signed = jws.serialize_compact(
            {"alg": "Ed25519", "kid": shop.shop_id}, body, shop.key, algorithms=["Ed25519"]
        )
        resp = await push(client, signed)
        assert resp.status_code == 400, odd
        assert "JWS payload holds" in resp.json()["detail"]
    no_place = shop.report()
    del no_place["okw"]["location"]["gpsCoordinates"]
    resp = await push(client, shop.sign(no_place))
    assert resp.status_code == 400
    assert "gpsCoordinates" in resp.json()["detail"]


async def test_expired_shops_are_listed_last_and_marked(client: Client, open_hub: Any) -> None:
    old, fresh = Shop("Aardvark"), Shop("Zebra")
    now = dt.datetime.now(dt.UTC)
    # Old's report lives 60 s, fresh's the default 15 min; the hub's clock then moves on 2 min
    # (no race with the wall clock on a loaded machine).
    assert (await push(client, old.jws(ttl_s=60))).status_code == 202
    assert (await push(client, fresh.jws())).status_code == 202
    client_app = open_hub
    client_app.state.clock = lambda: now + dt.timedelta(seconds=120)
    shops = (await client.get("/api/v1/network/shops")).json()["shops"]
    assert [(s["name"], s["expired"]) for s in shops] == [("Zebra", False), ("Aardvark", True)]
    live = (await client.get("/api/v1/network/shops", params={"live": "true"})).json()["shops"]
    assert [s["name"] for s in live] == ["Zebra"]


async def test_reading_needs_a_login_unless_the_hub_publishes(
    client: Client, app: Any, member: dict[str, str]
) -> None:
    app.state.settings = app.state.settings.model_copy(update={"network_publish": False})
    assert (await client.get("/api/v1/network/shops")).status_code == 401
    assert (await client.get("/api/v1/network/shops", headers=member)).status_code == 200
    app.state.settings = app.state.settings.model_copy(update={"hub": False})
    resp = await client.post("/api/v1/network/reports", content="x.y.z", headers=JOSE)
    assert resp.status_code == 404
    assert "not a hub" in resp.json()["detail"]
