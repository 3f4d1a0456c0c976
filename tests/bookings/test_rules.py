"""Booking rules over HTTP, on SQLite and PostgreSQL: each test fails without its rule."""

from __future__ import annotations

from typing import Any

import httpx

from tests.bookings.conftest import Clock, book, iso, paris
from tests.conftest import UserFactory

TOMORROW = (2026, 12, 2)


async def test_member_books_a_free_slot_and_gets_a_confirmation(
    client: httpx.AsyncClient, clock: Clock, member: dict[str, str], machine: dict[str, Any]
) -> None:
    resp = await book(client, member, machine["id"], paris(*TOMORROW, 10), paris(*TOMORROW, 11))
    assert resp.status_code == 201, resp.text
    booking = resp.json()
    assert booking["status"] == "booked"
    assert booking["start_at"].startswith("2026-12-02T09:00:00")  # 10:00 Paris is 09:00 UTC
    listed = (await client.get("/api/v1/bookings", headers=member)).json()
    assert [b["id"] for b in listed] == [booking["id"]]
    notes = (await client.get("/api/v1/notifications", headers=member)).json()
    assert notes[0]["kind"] == "booking_confirmed"
    assert "Printer A" in notes[0]["subject"]


async def test_bad_input_is_refused_with_a_clear_message(
    client: httpx.AsyncClient,
    clock: Clock,
    member: dict[str, str],
    operator: dict[str, str],
    machine: dict[str, Any],
) -> None:
    mid = machine["id"]
    start, end = paris(*TOMORROW, 10), paris(*TOMORROW, 11)
    resp = await book(client, member, mid, end, start)
    assert resp.status_code == 422
    assert "end is before start" in resp.json()["detail"]
    resp = await book(client, member, mid, start, start)
    assert resp.status_code == 422
    assert "zero minutes" in resp.json()["detail"]
    resp = await book(client, member, mid, paris(*TOMORROW, 10, 5), end)
    assert resp.status_code == 422
    assert resp.json()["rule"] == "slot"
    assert "15-minute slot grid" in resp.json()["detail"]
    naive = {"machine_id": mid, "start": "2026-12-02T10:00:00", "end": "2026-12-02T11:00:00"}
    resp = await client.post("/api/v1/bookings", json=naive, headers=member)
    assert resp.status_code == 422
    assert "timezone" in str(resp.json()["detail"])
    resp = await book(client, member, mid, paris(2026, 11, 30, 10), paris(2026, 11, 30, 11))
    assert resp.status_code == 422
    assert "in the past" in resp.json()["detail"]

    await client.patch(f"/api/v1/machines/{mid}", json={"maintenance": True}, headers=operator)
    resp = await book(client, member, mid, start, end)
    assert resp.status_code == 409
    assert "in maintenance" in resp.json()["detail"]


async def test_overlapping_booking_is_refused(
    client: httpx.AsyncClient, clock: Clock, make_user: UserFactory, machine: dict[str, Any]
) -> None:
    _, alice = await make_user("member")
    _, bob = await make_user("member")
    first = await book(client, alice, machine["id"], paris(*TOMORROW, 10), paris(*TOMORROW, 11))
    assert first.status_code == 201
    resp = await book(client, bob, machine["id"], paris(*TOMORROW, 10, 30), paris(*TOMORROW, 12))
    assert resp.status_code == 409
    assert resp.json()["rule"] == "taken"
    assert "already booked" in resp.json()["detail"]
    # Back to back is fine when the machine has no buffer.
    ok = await book(client, bob, machine["id"], paris(*TOMORROW, 11), paris(*TOMORROW, 12))
    assert ok.status_code == 201, ok.text


async def test_buffer_time_keeps_a_gap_between_bookings(
    client: httpx.AsyncClient,
    clock: Clock,
    make_user: UserFactory,
    operator: dict[str, str],
    machine: dict[str, Any],
) -> None:
    mid = machine["id"]
    resp = await client.patch(
        f"/api/v1/machines/{mid}/booking-profile", json={"buffer_minutes": 15}, headers=operator
    )
    assert resp.json()["buffer_minutes"] == 15
    _, alice = await make_user("member")
    _, bob = await make_user("member")
    assert (
        await book(client, alice, mid, paris(*TOMORROW, 10), paris(*TOMORROW, 11))
    ).status_code == 201
    after = await book(client, bob, mid, paris(*TOMORROW, 11), paris(*TOMORROW, 12))
    assert after.status_code == 409
    assert after.json()["rule"] == "buffer"
    assert "15 minutes of cleaning time" in after.json()["detail"]
    before = await book(client, bob, mid, paris(*TOMORROW, 9), paris(*TOMORROW, 10))
    assert before.status_code == 409
    assert before.json()["rule"] == "buffer"
    ok = await book(client, bob, mid, paris(*TOMORROW, 11, 15), paris(*TOMORROW, 12))
    assert ok.status_code == 201, ok.text


async def test_horizon_limits_how_far_ahead_members_book(
    client: httpx.AsyncClient, clock: Clock, member: dict[str, str], machine: dict[str, Any]
) -> None:
    resp = await book(
        client, member, machine["id"], paris(2026, 12, 16, 10), paris(2026, 12, 16, 11)
    )
    assert resp.status_code == 403
    assert resp.json()["rule"] == "horizon"
    assert "14 days ahead" in resp.json()["detail"]
    ok = await book(client, member, machine["id"], paris(2026, 12, 15, 7), paris(2026, 12, 15, 8))
    assert ok.status_code == 201, ok.text


async def test_opening_hours_and_closures(
    client: httpx.AsyncClient,
    clock: Clock,
    member: dict[str, str],
    operator: dict[str, str],
    machine: dict[str, Any],
) -> None:
    week = [{"weekday": d, "opens": "09:00", "closes": "18:00"} for d in range(7)]
    resp = await client.put("/api/v1/opening-hours", json={"intervals": week}, headers=operator)
    assert resp.status_code == 200, resp.text
    mid = machine["id"]
    early = await book(client, member, mid, paris(*TOMORROW, 8, 30), paris(*TOMORROW, 9, 30))
    assert early.status_code == 409
    assert early.json()["rule"] == "opening_hours"
    late = await book(client, member, mid, paris(*TOMORROW, 17, 30), paris(*TOMORROW, 18, 15))
    assert late.status_code == 409
    assert (
        await book(client, member, mid, paris(*TOMORROW, 9), paris(*TOMORROW, 18))
    ).status_code == 201

    resp = await client.post(
        "/api/v1/closures",
        json={"first_day": "2026-12-03", "last_day": "2026-12-03", "reason": "inventory"},
        headers=operator,
    )
    assert resp.status_code == 201
    closed = await book(client, member, mid, paris(2026, 12, 3, 10), paris(2026, 12, 3, 11))
    assert closed.status_code == 409
    assert closed.json()["rule"] == "opening_hours"


async def test_training_is_required_where_the_machine_says_so(
    client: httpx.AsyncClient,
    clock: Clock,
    make_user: UserFactory,
    operator: dict[str, str],
    machine: dict[str, Any],
) -> None:
    mid = machine["id"]
    await client.patch(
        f"/api/v1/machines/{mid}/booking-profile",
        json={"requires_training": True},
        headers=operator,
    )
    user, headers = await make_user("member")
    start, end = paris(*TOMORROW, 10), paris(*TOMORROW, 11)
    resp = await book(client, headers, mid, start, end)
    assert resp.status_code == 403
    assert resp.json()["rule"] == "training"
    assert "ask an operator to certify you" in resp.json()["detail"]
    # A certification that expires before the booking ends does not count.
    expired = await client.post(
        "/api/v1/certifications",
        json={"user_id": user.id, "machine_kind": "fdm_printer", "expires_at": iso(start)},
        headers=operator,
    )
    assert expired.status_code == 201
    assert (await book(client, headers, mid, start, end)).status_code == 403
    members_may_not = await client.post(
        "/api/v1/certifications", json={"user_id": user.id, "machine_id": mid}, headers=headers
    )
    assert members_may_not.status_code == 403
    cert = await client.post(
        "/api/v1/certifications", json={"user_id": user.id, "machine_id": mid}, headers=operator
    )
    assert (await book(client, headers, mid, start, end)).status_code == 201
    await client.delete(f"/api/v1/certifications/{cert.json()['id']}", headers=operator)
    again = await book(client, headers, mid, paris(*TOMORROW, 12), paris(*TOMORROW, 13))
    assert again.status_code == 403


async def test_weekly_quota_per_machine_kind(
    client: httpx.AsyncClient,
    clock: Clock,
    member: dict[str, str],
    operator: dict[str, str],
    machine: dict[str, Any],
) -> None:
    resp = await client.put(
        "/api/v1/quotas/fdm_printer", json={"hours_per_week": 2}, headers=operator
    )
    assert resp.status_code == 200, resp.text
    mid = machine["id"]
    assert (
        await book(client, member, mid, paris(*TOMORROW, 10), paris(*TOMORROW, 11, 30))
    ).status_code == 201
    over = await book(client, member, mid, paris(2026, 12, 4, 10), paris(2026, 12, 4, 11))
    assert over.status_code == 403
    assert over.json()["rule"] == "quota"
    assert "2 h" in over.json()["detail"]
    fits = await book(client, member, mid, paris(2026, 12, 4, 10), paris(2026, 12, 4, 10, 30))
    assert fits.status_code == 201
    next_week = await book(client, member, mid, paris(2026, 12, 8, 10), paris(2026, 12, 8, 12))
    assert next_week.status_code == 201, next_week.text


async def test_max_future_bookings(
    client: httpx.AsyncClient,
    clock: Clock,
    member: dict[str, str],
    operator: dict[str, str],
    machine: dict[str, Any],
) -> None:
    await client.patch("/api/v1/booking-policy", json={"max_future_bookings": 2}, headers=operator)
    mid = machine["id"]
    for hour in (10, 12):
        assert (
            await book(client, member, mid, paris(*TOMORROW, hour), paris(*TOMORROW, hour + 1))
        ).status_code == 201
    third = await book(client, member, mid, paris(*TOMORROW, 14), paris(*TOMORROW, 15))
    assert third.status_code == 403
    assert third.json()["rule"] == "max_future_bookings"


async def test_cancellation_cutoff_for_members_not_operators(
    client: httpx.AsyncClient,
    clock: Clock,
    member: dict[str, str],
    operator: dict[str, str],
    machine: dict[str, Any],
) -> None:
    mid = machine["id"]
    soon = await book(client, member, mid, paris(2026, 12, 1, 9), paris(2026, 12, 1, 10))
    later = await book(client, member, mid, paris(2026, 12, 1, 11), paris(2026, 12, 1, 12))
    assert soon.status_code == later.status_code == 201
    refused = await client.delete(f"/api/v1/bookings/{soon.json()['id']}", headers=member)
    assert refused.status_code == 403
    assert refused.json()["rule"] == "cancellation_cutoff"
    assert "ask an operator" in refused.json()["detail"]
    ok = await client.delete(f"/api/v1/bookings/{later.json()['id']}", headers=member)
    assert ok.status_code == 200
    assert ok.json()["status"] == "cancelled"
    by_operator = await client.delete(
        f"/api/v1/bookings/{soon.json()['id']}", params={"reason": "jam"}, headers=operator
    )
    assert by_operator.status_code == 200
    # Kept for the record, but the slot is free again.
    kept = await client.get("/api/v1/bookings", params={"include_cancelled": True}, headers=member)
    assert {b["status"] for b in kept.json()} == {"cancelled"}
    rebook = await book(client, member, mid, paris(2026, 12, 1, 9), paris(2026, 12, 1, 10))
    assert rebook.status_code == 201, rebook.text
    notes = (await client.get("/api/v1/notifications", headers=member)).json()
    assert any(n["kind"] == "booking_cancelled" and "jam" in n["body"] for n in notes)


async def test_check_in_within_the_grace_period(
    client: httpx.AsyncClient,
    clock: Clock,
    make_user: UserFactory,
    machine: dict[str, Any],
) -> None:
    _, alice = await make_user("member")
    _, bob = await make_user("member")
    b = (
        await book(client, alice, machine["id"], paris(2026, 12, 1, 10), paris(2026, 12, 1, 11))
    ).json()
    early = await client.post(f"/api/v1/bookings/{b['id']}/check-in", headers=alice)
    assert early.status_code == 409
    assert "check-in opens at" in early.json()["detail"]
    assert (
        await client.post(f"/api/v1/bookings/{b['id']}/check-in", headers=bob)
    ).status_code == 404
    clock.now = paris(2026, 12, 1, 10, 10)
    ok = await client.post(f"/api/v1/bookings/{b['id']}/check-in", headers=alice)
    assert ok.status_code == 200
    assert ok.json()["status"] == "checked_in"

    late = (
        await book(client, alice, machine["id"], paris(2026, 12, 1, 12), paris(2026, 12, 1, 13))
    ).json()
    clock.now = paris(2026, 12, 1, 12, 16)
    refused = await client.post(f"/api/v1/bookings/{late['id']}/check-in", headers=alice)
    assert refused.status_code == 409
    assert "grace period is over" in refused.json()["detail"]


async def test_maintenance_blocks_cancel_or_keep_overlapping_bookings(
    client: httpx.AsyncClient,
    clock: Clock,
    member: dict[str, str],
    operator: dict[str, str],
    machine: dict[str, Any],
) -> None:
    mid = machine["id"]
    b1 = (await book(client, member, mid, paris(*TOMORROW, 10), paris(*TOMORROW, 11))).json()
    b2 = (await book(client, member, mid, paris(*TOMORROW, 14), paris(*TOMORROW, 15))).json()
    block = {"machine_id": mid, "start": iso(paris(*TOMORROW, 9)), "end": iso(paris(*TOMORROW, 12))}
    ask = await client.post("/api/v1/maintenance-blocks", json=block, headers=operator)
    assert ask.status_code == 409
    assert ask.json()["bookings"] == [b1["id"]]
    assert "on_conflict" in ask.json()["detail"]
    assert (
        await client.post("/api/v1/maintenance-blocks", json=block, headers=member)
    ).status_code == 403
    done = await client.post(
        "/api/v1/maintenance-blocks",
        json={**block, "on_conflict": "cancel", "reason": "new nozzle"},
        headers=operator,
    )
    assert done.status_code == 201, done.text
    assert done.json()["cancelled_booking_ids"] == [b1["id"]]
    gone = await client.get(f"/api/v1/bookings/{b1['id']}", headers=member)
    assert gone.json()["status"] == "cancelled"
    notes = (await client.get("/api/v1/notifications", headers=member)).json()
    assert any(n["kind"] == "maintenance_cancelled" and "new nozzle" in n["body"] for n in notes)
    blocked = await book(client, member, mid, paris(*TOMORROW, 11), paris(*TOMORROW, 12))
    assert blocked.status_code == 409
    assert blocked.json()["rule"] == "maintenance"

    keep = await client.post(
        "/api/v1/maintenance-blocks",
        json={
            "machine_id": mid,
            "start": iso(paris(*TOMORROW, 14, 30)),
            "end": iso(paris(*TOMORROW, 16)),
            "on_conflict": "keep",
        },
        headers=operator,
    )
    assert keep.json()["kept_booking_ids"] == [b2["id"]]
    assert (await client.get(f"/api/v1/bookings/{b2['id']}", headers=member)).json()[
        "status"
    ] == "booked"


async def test_availability_hides_other_members(
    client: httpx.AsyncClient, clock: Clock, make_user: UserFactory, machine: dict[str, Any]
) -> None:
    _, alice = await make_user("member")
    _, bob = await make_user("member")
    mine = (
        await book(client, alice, machine["id"], paris(*TOMORROW, 10), paris(*TOMORROW, 11))
    ).json()
    await book(client, bob, machine["id"], paris(*TOMORROW, 12), paris(*TOMORROW, 13))
    resp = await client.get(
        "/api/v1/bookings/availability",
        params={
            "machine_id": machine["id"],
            "start": iso(paris(*TOMORROW)),
            "end": iso(paris(2026, 12, 3)),
        },
        headers=alice,
    )
    items = resp.json()
    assert [(i["mine"], i["booking_id"]) for i in items] == [(True, mine["id"]), (False, None)]
    # Bob's bookings do not show in Alice's list.
    assert len((await client.get("/api/v1/bookings", headers=alice)).json()) == 1
