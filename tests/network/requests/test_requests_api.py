"""Fabrication requests between shops, in process, on SQLite and PostgreSQL.

The app under test plays shop B (taking requests) or shop A (taking updates); the other
shop is a key made here, signing exactly as a shop does. Refusals: forged, replayed,
expired, addressed elsewhere, signed by the wrong shop, a key other than the pinned one.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import uuid
from typing import Any

import httpx
import pytest
from joserfc.jwk import OKPKey
from jwcrypto import jwk as jc_jwk
from jwcrypto import jws as jc_jws

from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role, TokenKind
from microfactory.accounts.schemas import UserCreate
from microfactory.config import Settings
from microfactory.errors import InsufficientStorageError
from microfactory.network import identity
from microfactory.network.requests import outbox, signing
from microfactory.network.requests.models import FabricationRequest
from tests.conftest import UserFactory

NOW = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)
JOSE = {"Content-Type": "application/jose"}
HASH = "ab" * 32
PEER_URL = "http://127.0.0.1:9"  # nothing listens: deliveries fail, and are noted


@pytest.fixture(autouse=True)
def fixed_clock(app: Any) -> None:
    app.state.clock = lambda: NOW


def _other_shop() -> identity.ShopKey:
    key = OKPKey.generate_key("Ed25519", private=True)
    return identity.ShopKey(key=key, shop_id=key.thumbprint())


def _ours(settings: Settings) -> identity.ShopKey:
    return identity.shop_key(settings.data_dir)


def _request(
    sender: identity.ShopKey, to: str, *, sequence: int = 1, issued: dt.datetime = NOW, **kw: Any
) -> tuple[str, dict[str, Any]]:
    issued_at, expires_at = signing.times(issued, 3600)
    payload: dict[str, Any] = {
        "type": signing.REQUEST_TYPE,
        "id": str(uuid.uuid4()),
        "shop_id": sender.shop_id,
        "key": sender.public_jwk(),
        "url": PEER_URL,
        "to": to,
        "sequence": sequence,
        "issuedAt": issued_at,
        "expiresAt": expires_at,
        "design": {"hash": HASH, "title": "Bracket"},
        "parameters": {"width": 20},
        "material": "PLA",
        "quantity": 2,
        "dueDate": "2026-12-10",
        "requester": "3f1c0a",
        "contact": None,
        **kw,
    }
    return signing.sign(payload, sender), payload


def _flip(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{header}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}.{signature}"


async def test_b_takes_a_signed_request_and_refuses_forgeries_replays_and_expired_ones(
    client: httpx.AsyncClient, settings: Settings, make_user: UserFactory
) -> None:
    b = _ours(settings)
    a = _other_shop()
    _, operator = await make_user(Role.OPERATOR)
    _, member = await make_user(Role.MEMBER)
    token, payload = _request(a, b.shop_id)

    resp = await client.post("/api/v1/network/requests", content=token, headers=JOSE)
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"id": payload["id"], "state": "received", "shop_id": b.shop_id}

    shown = await client.get(f"/api/v1/network/requests/{payload['id']}", headers=operator)
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["direction"] == "incoming"
    assert body["peer_shop_id"] == a.shop_id
    assert (body["design_hash"], body["quantity"], body["material"]) == (HASH, 2, "PLA")
    assert [(m["direction"], m["kind"]) for m in body["messages"]] == [("received", "request")]
    assert body["messages"][0]["jws"] == token
    # A member of B has nothing to do with another shop's request.
    hidden = await client.get(f"/api/v1/network/requests/{payload['id']}", headers=member)
    assert hidden.status_code == 404

    replay = await client.post("/api/v1/network/requests", content=token, headers=JOSE)
    assert replay.status_code == 409, replay.text
    assert "replay" in replay.json()["detail"]

    forged = await client.post("/api/v1/network/requests", content=_flip(token), headers=JOSE)
    assert forged.status_code in (400, 401), forged.text

    # Signed by another key that claims A's id: the signature does not verify.
    impostor = _other_shop()
    _, claimed = _request(a, b.shop_id, sequence=2)
    wrong_sig = identity.ShopKey(key=impostor.key, shop_id=a.shop_id)
    bad = await client.post(
        "/api/v1/network/requests", content=signing.sign(claimed, wrong_sig), headers=JOSE
    )
    assert bad.status_code == 401, bad.text

    # Another shop's own valid key, for A's URL: not the key pinned on first use.
    other, _ = _request(impostor, b.shop_id)
    pinned = await client.post("/api/v1/network/requests", content=other, headers=JOSE)
    assert pinned.status_code == 401, pinned.text
    assert "pinned" in pinned.json()["detail"]

    old, _ = _request(a, b.shop_id, issued=NOW - dt.timedelta(hours=2))
    expired = await client.post("/api/v1/network/requests", content=old, headers=JOSE)
    assert expired.status_code == 422, expired.text
    assert "expired" in expired.json()["detail"]

    elsewhere, _ = _request(a, _other_shop().shop_id)
    wrong_to = await client.post("/api/v1/network/requests", content=elsewhere, headers=JOSE)
    assert wrong_to.status_code == 422, wrong_to.text

    not_jws = await client.post("/api/v1/network/requests", content=b"hello", headers=JOSE)
    assert not_jws.status_code == 400


async def test_b_declines_with_a_reason_in_a_signed_update_kept_in_the_log(
    client: httpx.AsyncClient, settings: Settings, make_user: UserFactory
) -> None:
    b = _ours(settings)
    a = _other_shop()
    _, operator = await make_user(Role.OPERATOR)
    token, payload = _request(a, b.shop_id)
    assert (await client.post("/api/v1/network/requests", content=token, headers=JOSE)).is_success
    resp = await client.post(
        f"/api/v1/network/requests/{payload['id']}/decline",
        json={"reason": "our printers are booked until January"},
        headers=operator,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["state"] == "declined"
    sent = body["messages"][-1]
    assert (sent["direction"], sent["kind"]) == ("sent", "declined")
    assert "cannot reach" in (sent["delivery"] or "")  # A is not listening
    # The update is what A verifies: B's key, for A, about this request.
    update = signing.verify(sent["jws"], kind=signing.UPDATE_TYPE, to=a.shop_id)
    assert update.shop_id == b.shop_id
    assert update.payload["request"] == payload["id"]
    assert update.payload["reason"] == "our printers are booked until January"
    # Verified with a second, independent JOSE library too.
    checker = jc_jws.JWS()
    checker.deserialize(sent["jws"])
    checker.verify(jc_jwk.JWK(**b.public_jwk()))
    again = await client.post(
        f"/api/v1/network/requests/{payload['id']}/accept", json={}, headers=operator
    )
    assert again.status_code == 409, again.text


def _update(
    sender: identity.ShopKey,
    to: str,
    request_id: str,
    status: str,
    *,
    sequence: int,
    issued: dt.datetime = NOW,
    **kw: Any,
) -> str:
    issued_at, expires_at = signing.times(issued, 3600)
    payload: dict[str, Any] = {
        "type": signing.UPDATE_TYPE,
        "request": request_id,
        "shop_id": sender.shop_id,
        "key": sender.public_jwk(),
        "url": PEER_URL,
        "to": to,
        "sequence": sequence,
        "issuedAt": issued_at,
        "expiresAt": expires_at,
        "status": status,
        "reason": None,
        "quote": None,
        "proposedDate": None,
        "outcome": None,
        **kw,
    }
    return signing.sign(payload, sender)


async def test_a_takes_signed_updates_from_b_only_in_order_and_shows_them_to_the_member(
    app: Any, client: httpx.AsyncClient, settings: Settings, make_user: UserFactory
) -> None:
    a = _ours(settings)
    b = _other_shop()
    member_user, member = await make_user(Role.MEMBER)
    _, other_member = await make_user(Role.MEMBER)
    request_id = str(uuid.uuid4())
    async with app.state.sessionmaker() as session, session.begin():
        session.add(
            FabricationRequest(
                id=request_id, direction="outgoing", state="sent", peer_shop_id=b.shop_id,
                peer_url=PEER_URL, design_hash=HASH, design_title="Bracket", parameters={},
                material="PLA", quantity=1, due_date="2026-12-10", requester="x",
                member_id=member_user.id, last_peer_sequence=0, created_at=NOW,
                updated_at=NOW, messages=[],
            )
        )  # fmt: skip
    url = f"/api/v1/network/requests/{request_id}/updates"
    quote = {"totalCents": 1250, "machineKind": "fdm_printer"}
    accepted = _update(b, a.shop_id, request_id, "accepted", sequence=10, quote=quote)
    resp = await client.post(url, content=accepted, headers=JOSE)
    assert resp.status_code == 200, resp.text

    replay = await client.post(url, content=accepted, headers=JOSE)
    assert replay.status_code == 409, replay.text
    older = _update(b, a.shop_id, request_id, "started", sequence=9)
    assert (await client.post(url, content=older, headers=JOSE)).status_code == 409
    third = _other_shop()
    stranger = _update(third, a.shop_id, request_id, "started", sequence=11)
    assert (await client.post(url, content=stranger, headers=JOSE)).status_code == 401
    stale = _update(
        b, a.shop_id, request_id, "started", sequence=12, issued=NOW - dt.timedelta(hours=3)
    )
    assert (await client.post(url, content=stale, headers=JOSE)).status_code == 422
    forged = _flip(_update(b, a.shop_id, request_id, "started", sequence=13))
    assert (await client.post(url, content=forged, headers=JOSE)).status_code in (400, 401)
    # Out of order: finished before started is refused.
    early = _update(b, a.shop_id, request_id, "finished", sequence=14, outcome="good")
    assert (await client.post(url, content=early, headers=JOSE)).status_code == 409

    for seq, status, extra in (
        (15, "started", {}),
        (16, "finished", {"outcome": "good"}),
        (17, "collected", {}),
    ):
        token = _update(b, a.shop_id, request_id, status, sequence=seq, **extra)
        done = await client.post(url, content=token, headers=JOSE)
        assert done.status_code == 200, done.text

    shown = await client.get(f"/api/v1/network/requests/{request_id}", headers=member)
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["state"] == "collected"
    assert body["quote"] == quote
    assert body["outcome"] == "good"
    assert [m["kind"] for m in body["messages"]] == [
        "accepted", "started", "finished", "collected",
    ]  # fmt: skip
    listed = await client.get("/api/v1/network/requests", headers=member)
    assert [r["id"] for r in listed.json()] == [request_id]
    assert (await client.get("/api/v1/network/requests", headers=other_member)).json() == []
    hidden = await client.get(f"/api/v1/network/requests/{request_id}", headers=other_member)
    assert hidden.status_code == 404
    unknown = _update(b, a.shop_id, str(uuid.uuid4()), "accepted", sequence=20)
    gone = await client.post(
        f"/api/v1/network/requests/{uuid.uuid4()}/updates", content=unknown, headers=JOSE
    )
    assert gone.status_code == 422  # the update names another request than the URL


async def test_a_member_needs_a_public_design_to_send_one(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    resp = await client.post(
        "/api/v1/network/requests/send",
        json={"shop_url": "ftp://example.org", "design_id": 1, "due_date": "2026-12-10"},
        headers=member,
    )
    assert resp.status_code == 422, resp.text
    assert "http" in resp.json()["detail"]


GCODE = b"G21\nG90\nM82\nG92 E0\nG1 X10 Y10 E1 F1200\nG1 X20 Y10 E2\n"


async def test_b_accepts_a_held_nc_design_only_without_a_price_and_makes_it_a_job(
    client: httpx.AsyncClient, settings: Settings, make_user: UserFactory
) -> None:
    b = _ours(settings)
    a = _other_shop()
    _, operator = await make_user(Role.OPERATOR)
    design = await client.post(
        "/api/v1/designs",
        headers=operator,
        data={"title": "Clip", "licence": "CC-BY-NC-4.0", "authors": ["Ann"]},
        files={"files": ("clip.gcode", GCODE, "text/x-gcode")},
    )
    assert design.status_code == 201, design.text
    content_hash = design.json()["content_hash"]
    rate = await client.put(
        "/api/v1/rates/machine-kinds/fdm_printer", json={"cents_per_hour": 400}, headers=operator
    )
    assert rate.status_code == 200, rate.text
    token, payload = _request(
        a, b.shop_id, design={"hash": content_hash, "title": "Clip"}, parameters={}, quantity=1
    )
    assert (await client.post("/api/v1/network/requests", content=token, headers=JOSE)).is_success
    url = f"/api/v1/network/requests/{payload['id']}"

    priced = await client.post(
        f"{url}/accept", json={"hours": 1, "material_g": 10}, headers=operator
    )
    assert priced.status_code == 422, priced.text
    assert "non-commercial" in priced.json()["detail"]
    still = await client.get(url, headers=operator)
    assert still.json()["state"] == "received"
    assert still.json()["job_id"] is None

    free = await client.post(f"{url}/accept", json={}, headers=operator)
    assert free.status_code == 200, free.text
    body = free.json()
    assert body["state"] == "accepted"
    assert body["quote"]["totalCents"] == 0
    assert body["design_id"] == design.json()["id"]  # held already: not fetched again
    job = await client.get(f"/api/v1/jobs/{body['job_id']}", headers=operator)
    assert job.status_code == 200, job.text
    assert job.json()["design_id"] == design.json()["id"]
    assert "Ann" in str(job.json()["attribution"])
    accepted = signing.verify(body["messages"][-1]["jws"], kind=signing.UPDATE_TYPE, to=a.shop_id)
    assert accepted.payload["quote"] == body["quote"]
    # Progress follows the order: not finished before started.
    early = await client.post(
        f"{url}/progress", json={"status": "finished", "outcome": "good"}, headers=operator
    )
    assert early.status_code == 409, early.text
    started = await client.post(f"{url}/progress", json={"status": "started"}, headers=operator)
    assert started.status_code == 200, started.text
    assert started.json()["state"] == "started"


CSRF = "test-csrf-token-value"


async def _browser(app: Any, client: httpx.AsyncClient, role: Role) -> httpx.AsyncClient:
    async with app.state.sessionmaker() as session:
        user = await account_service.create(
            session=session,
            user_in=UserCreate(username=f"web-{role.value}", password="pass-word-1", role=role),
        )
        token, _ = await account_service.issue_token(session=session, user=user, kind=TokenKind.WEB)
        await session.commit()
    c = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    c.cookies.set("mf_session", token)
    c.cookies.set("mf_csrf", CSRF)
    return c


async def test_operators_answer_from_the_page_and_members_find_the_send_form(
    app: Any, client: httpx.AsyncClient, settings: Settings
) -> None:
    b = _ours(settings)
    token, payload = _request(_other_shop(), b.shop_id)
    assert (await client.post("/api/v1/network/requests", content=token, headers=JOSE)).is_success
    async with await _browser(app, client, Role.OPERATOR) as web:
        listed = await web.get("/network/requests")
        assert listed.status_code == 200
        assert payload["id"][:8] in listed.text
        queue = await web.get("/queue")  # the operator's queue page shows it to answer
        assert "Requests from other shops (1)" in queue.text
        assert f'href="/network/requests/{payload["id"]}">Answer' in queue.text
        page = await web.get(f"/network/requests/{payload['id']}")
        assert page.status_code == 200
        assert "Accept with a quote" in page.text
        bad = await web.post(
            f"/network/requests/{payload['id']}/counter",
            data={"csrf_token": CSRF, "date": "not a date", "reason": "busy"},
        )
        assert bad.status_code == 303
        assert "error=" in bad.headers["location"]
        done = await web.post(
            f"/network/requests/{payload['id']}/decline",
            data={"csrf_token": CSRF, "reason": "no PLA left"},
        )
        assert done.status_code == 303, done.text
        after = await web.get(done.headers["location"])
        assert "declined" in after.text
        assert "no PLA left" in after.text
        assert "Accept with a quote" not in after.text
        assert "Requests from other shops" not in (await web.get("/queue")).text  # answered
    async with await _browser(app, client, Role.MEMBER) as web:
        mine = await web.get("/network/requests")
        assert mine.status_code == 200
        assert "Make a design elsewhere" in mine.text
        assert payload["id"][:8] not in mine.text  # another shop's request is for staff


async def test_a_shop_named_only_by_its_id_is_looked_up_on_the_hubs(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    _, member = await make_user(Role.MEMBER)
    nameless = await client.post(
        "/api/v1/network/requests/send",
        json={"design_id": 1, "due_date": "2026-12-10"},
        headers=member,
    )
    assert nameless.status_code == 422, nameless.text
    assert "shop_url" in nameless.text
    design = await client.post(
        "/api/v1/designs",
        headers=member,
        data={"title": "Clip", "licence": "CC-BY-4.0", "visibility": "public"},
        files={"files": ("clip.gcode", GCODE, "text/x-gcode")},
    )
    assert design.status_code == 201, design.text
    resp = await client.post(
        "/api/v1/network/requests/send",
        json={"shop_id": "x" * 43, "design_id": design.json()["id"], "due_date": "2026-12-10"},
        headers=member,
    )
    assert resp.status_code == 422, resp.text
    # Publishing is off in the test settings: the design could not travel anyway.
    assert "public" in resp.json()["detail"]
    app.state.settings = app.state.settings.model_copy(update={"network_publish": True})
    resp = await client.post(
        "/api/v1/network/requests/send",
        json={"shop_id": "x" * 43, "design_id": design.json()["id"], "due_date": "2026-12-10"},
        headers=member,
    )
    assert resp.status_code == 422, resp.text
    assert "no hub is configured" in resp.json()["detail"]


async def test_the_same_request_arriving_several_times_at_once_is_taken_once(
    client: httpx.AsyncClient, settings: Settings, make_user: UserFactory
) -> None:
    b = _ours(settings)
    _, operator = await make_user(Role.OPERATOR)
    # A shop's first requests, sent twice each at once (a retry racing the first attempt):
    # the key is pinned once, each request taken once, every other copy a clean 409.
    a = _other_shop()
    tokens = [_request(a, b.shop_id, sequence=n) for n in (1, 2)]
    answers = await asyncio.gather(
        *(
            client.post("/api/v1/network/requests", content=token, headers=JOSE)
            for token, _ in tokens
            for _copy in range(3)
        )
    )
    codes = [r.status_code for r in answers]
    assert sorted(codes) == [201, 201, 409, 409, 409, 409], [r.text for r in answers]
    assert all("replay" in r.json()["detail"] for r in answers if r.status_code == 409)
    for _, payload in tokens:
        shown = await client.get(f"/api/v1/network/requests/{payload['id']}", headers=operator)
        assert shown.status_code == 200, shown.text
        assert [m["kind"] for m in shown.json()["messages"]] == ["request"]


async def test_an_acceptance_failing_midway_leaves_the_request_to_accept_again(
    client: httpx.AsyncClient,
    settings: Settings,
    make_user: UserFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = _ours(settings)
    a = _other_shop()
    _, operator = await make_user(Role.OPERATOR)
    _, admin = await make_user(Role.ADMIN)
    design = await client.post(
        "/api/v1/designs",
        headers=operator,
        data={"title": "Hook", "licence": "CC-BY-4.0"},
        files={"files": ("hook.gcode", GCODE, "text/x-gcode")},
    )
    assert design.status_code == 201, design.text
    token, payload = _request(
        a, b.shop_id, design={"hash": design.json()["content_hash"], "title": "Hook"},
        parameters={}, quantity=1,
    )  # fmt: skip
    assert (await client.post("/api/v1/network/requests", content=token, headers=JOSE)).is_success
    url = f"/api/v1/network/requests/{payload['id']}"
    jobs_before = (await client.get("/api/v1/jobs", headers=operator)).json()

    # The job is made, then signing the acceptance fails (the key's disk went away, say).
    real_sign = signing.sign

    def broken(*args: Any, **kw: Any) -> str:
        raise InsufficientStorageError("cannot read the shop key")

    monkeypatch.setattr(signing, "sign", broken)
    failed = await client.post(
        f"{url}/accept", json={"machine_kind": "fdm_printer"}, headers=operator
    )
    assert failed.status_code == 507, failed.text
    still = (await client.get(url, headers=operator)).json()
    assert (still["state"], still["job_id"], still["quote"]) == ("received", None, None)
    assert [m["kind"] for m in still["messages"]] == ["request"]
    assert (await client.get("/api/v1/jobs", headers=operator)).json() == jobs_before

    monkeypatch.setattr(signing, "sign", real_sign)
    rate = await client.put(
        "/api/v1/rates/machine-kinds/fdm_printer", json={"cents_per_hour": 400}, headers=operator
    )
    assert rate.status_code == 200, rate.text
    done = await client.post(
        f"{url}/accept", json={"machine_kind": "fdm_printer", "hours": 1.5}, headers=operator
    )
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["state"] == "accepted"
    assert body["job_id"] is not None
    # One job, and the signed acceptance queued for A (who is away: retried later).
    jobs_after = (await client.get("/api/v1/jobs", headers=operator)).json()
    assert len(jobs_after) == len(jobs_before) + 1
    sent = body["messages"][-1]
    assert (sent["kind"], sent["delivery_state"]) == ("accepted", "pending")
    assert sent["next_attempt_at"] is not None

    # The work is the other shop's, a network customer here, at the signed quote's price.
    statement = await client.get(
        "/api/v1/network/requests/statement?month=2026-11", headers=operator
    )
    assert statement.status_code == 200, statement.text
    lines = statement.json()["lines"]
    assert [(x["request_id"], x["shop_id"], x["total_cents"]) for x in lines] == [
        (payload["id"], a.shop_id, 600)
    ]
    assert statement.json()["total_cents"] == 600
    job = (await client.get(f"/api/v1/jobs/{body['job_id']}", headers=operator)).json()
    users = (await client.get("/api/v1/users", headers=admin)).json()
    owner = next(u for u in users if u["id"] == job["owner_id"])
    assert owner["username"] == lines[0]["customer"]
    assert owner["username"].startswith("network-")
    empty = await client.get("/api/v1/network/requests/statement?month=2026-10", headers=operator)
    assert empty.json()["lines"] == []


async def test_an_answer_the_other_shop_did_not_take_waits_in_the_outbox_across_restarts(
    app: Any, client: httpx.AsyncClient, settings: Settings, make_user: UserFactory
) -> None:
    b = _ours(settings)
    _, operator = await make_user(Role.OPERATOR)
    now = dt.datetime.now(dt.UTC)  # the scheduler's tick reads the real clock
    app.state.clock = lambda: now
    token, payload = _request(_other_shop(), b.shop_id, issued=now)
    assert (await client.post("/api/v1/network/requests", content=token, headers=JOSE)).is_success
    url = f"/api/v1/network/requests/{payload['id']}"
    resp = await client.post(f"{url}/decline", json={"reason": "closed"}, headers=operator)
    assert resp.status_code == 200, resp.text
    sent = resp.json()["messages"][-1]
    assert (sent["delivery_state"], sent["delivery_attempts"]) == ("pending", 1)
    assert "cannot reach" in sent["delivery"]

    # Another process (a restart) finds it in the database and tries at once, whatever
    # backoff the last one had reached; A is still away, so it stays pending, backing off.
    await outbox.outbox_tick(app.state.sessionmaker, "after-a-restart", {})
    again = (await client.get(url, headers=operator)).json()["messages"][-1]
    assert (again["delivery_state"], again["delivery_attempts"]) == ("pending", 2)
    assert again["next_attempt_at"] is not None
    assert [outbox.backoff_s(n) for n in (1, 2, 3, 10)] == [2.0, 4.0, 8.0, 120.0]

    # Past the message's own expiry it is given up, and shown so (A would refuse it).
    await outbox.deliver_request(
        sessionmaker=app.state.sessionmaker,
        request_id=payload["id"],
        now=now + dt.timedelta(days=2),
    )
    gone = (await client.get(url, headers=operator)).json()["messages"][-1]
    assert gone["delivery_state"] == "expired"
    assert gone["next_attempt_at"] is None


async def test_a_public_designs_page_offers_to_make_it_elsewhere_with_the_send_form(
    app: Any, client: httpx.AsyncClient
) -> None:
    app.state.settings = app.state.settings.model_copy(update={"network_publish": True})
    async with await _browser(app, client, Role.MEMBER) as web:
        added = await web.post(
            "/designs/new",
            data={"csrf_token": CSRF, "title": "Knob", "licence": "CC-BY-4.0",
                  "visibility": "public"},
            files={"files": ("knob.gcode", GCODE, "text/x-gcode")},
        )  # fmt: skip
        assert added.status_code == 303, added.text
        design_url = added.headers["location"]
        page = await web.get(design_url)
        assert 'id="make-elsewhere"' in page.text
        design_id = design_url.rstrip("/").split("/")[-1]
        form = await web.get(f"/network/requests/new?design_id={design_id}&material=PETG")
        assert form.status_code == 200, form.text
        assert "Make “Knob” elsewhere" in form.text
        assert 'name="design_id" value="' + design_id in form.text
        assert 'value="PETG"' in form.text
        # No hub here: the form says why it cannot route, and takes a shop's URL instead.
        assert "no hub is configured" in form.text
        assert 'name="shop_url"' in form.text
        refused = await web.post(
            "/network/requests/send",
            data={"csrf_token": CSRF, "back": "new", "design_id": design_id,
                  "shop_url": "ftp://example.org", "due_date": "2026-12-10"},
        )  # fmt: skip
        assert refused.status_code == 303
        assert refused.headers["location"].startswith("/network/requests/new?design_id=")
        again = await web.get(refused.headers["location"])
        assert 'role="alert"' in again.text
        assert "http" in again.text


async def test_a_member_agrees_to_a_counter_offer_from_the_page_signed_for_the_other_shop(
    app: Any, client: httpx.AsyncClient, settings: Settings
) -> None:
    a = _ours(settings)
    b = _other_shop()
    async with await _browser(app, client, Role.MEMBER) as web:
        me = (await web.get("/api/v1/users/me")).json()
        request_id = str(uuid.uuid4())
        async with app.state.sessionmaker() as session, session.begin():
            session.add(
                FabricationRequest(
                    id=request_id, direction="outgoing", state="sent", peer_shop_id=b.shop_id,
                    peer_url=PEER_URL, design_hash=HASH, design_title="Bracket", parameters={},
                    material="PLA", quantity=1, due_date="2026-12-10", requester="x",
                    member_id=me["id"], last_peer_sequence=0, created_at=NOW, updated_at=NOW,
                    messages=[],
                )
            )  # fmt: skip
        offer = _update(
            b, a.shop_id, request_id, "countered", sequence=3, proposedDate="2026-12-20",
            reason="booked until then", quote={"totalCents": 900},
        )  # fmt: skip
        taken = await client.post(
            f"/api/v1/network/requests/{request_id}/updates", content=offer, headers=JOSE
        )
        assert taken.status_code == 200, taken.text
        page = await web.get(f"/network/requests/{request_id}")
        assert "Accept the new date" in page.text
        assert "2026-12-20" in page.text
        done = await web.post(
            f"/network/requests/{request_id}/reply", data={"csrf_token": CSRF, "agree": "true"}
        )
        assert done.status_code == 303, done.text
        assert "retrying" in done.headers["location"]  # B (PEER_URL) is not listening
        body = (await web.get(f"/api/v1/network/requests/{request_id}")).json()
        assert body["state"] == "agreed"
        reply = signing.verify(body["messages"][-1]["jws"], kind=signing.UPDATE_TYPE, to=b.shop_id)
        assert (reply.shop_id, reply.payload["status"]) == (a.shop_id, "agreed")
        assert reply.payload["proposedDate"] == "2026-12-20"
        twice = await web.post(
            f"/network/requests/{request_id}/reply", data={"csrf_token": CSRF, "agree": "false"}
        )
        assert "error=" in twice.headers["location"]
