"""Inputs that used to end in a 500 ("Exception in ASGI application") get a clear 4xx.

Each case is one the fuzzer (schemathesis) or a person found; the README's "no input produces
a 500" rests on these and on tests/fuzz/test_schemathesis.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import UserFactory

HUGE = 2**63  # one past the largest signed 64-bit id
HUGER = 10**30

MANUAL = {"name": "Manual printer", "kind": "fdm_printer", "driver": "manual"}


async def make_machine(
    client: httpx.AsyncClient, operator: dict[str, str], **extra: Any
) -> dict[str, Any]:
    resp = await client.post("/api/v1/machines", json={**MANUAL, **extra}, headers=operator)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def assert_clear_422(resp: httpx.Response, *needles: str) -> None:
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert "detail" in body
    for needle in needles:
        assert needle in resp.text, (needle, resp.text)


# -- ids beyond 64 bits ----------------------------------------------------------------------


@pytest.mark.parametrize("big", [HUGE, HUGER])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/machines/{id}"),
        ("DELETE", "/api/v1/machines/{id}"),
        ("POST", "/api/v1/machines/{id}/emergency-stop"),
        ("GET", "/api/v1/jobs/{id}"),
        ("POST", "/api/v1/jobs/{id}/cancel"),
        ("GET", "/api/v1/bookings/{id}"),
        ("DELETE", "/api/v1/bookings/{id}"),
        ("POST", "/api/v1/bookings/{id}/check-in"),
        ("DELETE", "/api/v1/certifications/{id}"),
        ("DELETE", "/api/v1/maintenance-blocks/{id}"),
        ("DELETE", "/api/v1/suspensions/{id}"),
        ("DELETE", "/api/v1/users/me/tokens/{id}"),
        ("GET", "/api/v1/designs/{id}"),
        ("GET", "/api/v1/maintenance-blocks?machine_id={id}"),
        ("GET", "/api/v1/designs?offset={id}"),
    ],
)
async def test_ids_beyond_64_bits_in_paths_are_422(
    client: httpx.AsyncClient, operator: dict[str, str], method: str, path: str, big: int
) -> None:
    resp = await client.request(method, path.format(id=big), headers=operator)
    assert_clear_422(resp, "less than or equal to 9223372036854775807")


async def test_huge_usage_record_id_in_a_correction_is_422(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    resp = await client.post(
        f"/api/v1/usage/{HUGE}/corrections",
        json={"active_s": -60, "note": "wrong timer"},
        headers=operator,
    )
    assert_clear_422(resp, "record_id")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/api/v1/bookings",
            {"machine_id": HUGE, "start": "2026-12-02T10:00:00Z", "end": "2026-12-02T11:00:00Z"},
            "machine_id",
        ),
        ("/api/v1/certifications", {"user_id": -HUGE, "machine_kind": "other"}, "user_id"),
        (
            "/api/v1/maintenance-blocks",
            {"machine_id": HUGE, "start": "2026-12-02T10:00:00Z", "end": "2026-12-02T11:00:00Z"},
            "machine_id",
        ),
    ],
)
async def test_ids_beyond_64_bits_in_bodies_are_422(
    client: httpx.AsyncClient,
    operator: dict[str, str],
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    resp = await client.post(path, json=body, headers=operator)
    assert_clear_422(resp, field)


# -- times at the ends of the calendar -------------------------------------------------------


@pytest.mark.parametrize("year", ["0001", "9999"])
async def test_bookings_and_availability_at_year_1_or_9999_are_422(
    client: httpx.AsyncClient, operator: dict[str, str], year: str
) -> None:
    machine = await make_machine(client, operator)
    start, end = f"{year}-06-01T10:00:00Z", f"{year}-06-01T11:00:00Z"
    booked = await client.post(
        "/api/v1/bookings",
        json={"machine_id": machine["id"], "start": start, "end": end},
        headers=operator,
    )
    assert_clear_422(booked, "year must be between 1970 and 2999")
    busy = await client.get(
        "/api/v1/bookings/availability",
        params={"machine_id": machine["id"], "start": start, "end": end},
        headers=operator,
    )
    assert_clear_422(busy, "year must be between")
    listed = await client.get("/api/v1/bookings", params={"start": start}, headers=operator)
    assert_clear_422(listed, "year must be between")


@pytest.mark.parametrize("year", ["0001", "9999"])
async def test_usage_and_statements_at_year_1_or_9999_are_422(
    client: httpx.AsyncClient, operator: dict[str, str], year: str
) -> None:
    usage = await client.get(
        "/api/v1/usage", params={"start": f"{year}-01-01T00:00:00Z"}, headers=operator
    )
    assert_clear_422(usage, "year must be between")
    month = await client.get("/api/v1/usage", params={"month": f"{year}-12"}, headers=operator)
    assert month.status_code == 422, month.text
    utilisation = await client.get(
        "/api/v1/usage/utilisation", params={"first_day": f"{year}-12-31"}, headers=operator
    )
    assert_clear_422(utilisation, "year must be between")
    statement = await client.get(
        "/api/v1/statements", params={"month": f"{year}-12"}, headers=operator
    )
    assert statement.status_code == 422, statement.text


@pytest.mark.parametrize("year", ["0001", "9999"])
async def test_maintenance_and_certification_expiry_at_year_1_or_9999_are_422(
    client: httpx.AsyncClient, operator: dict[str, str], make_user: UserFactory, year: str
) -> None:
    machine = await make_machine(client, operator)
    member, _ = await make_user("member")
    block = await client.post(
        "/api/v1/maintenance-blocks",
        json={
            "machine_id": machine["id"],
            "start": f"{year}-06-01T10:00:00Z",
            "end": f"{year}-06-01T12:00:00Z",
        },
        headers=operator,
    )
    assert_clear_422(block, "year must be between")
    cert = await client.post(
        "/api/v1/certifications",
        json={
            "user_id": member.id,
            "machine_id": machine["id"],
            "expires_at": f"{year}-12-31T23:59:59Z",
        },
        headers=operator,
    )
    assert_clear_422(cert, "year must be between")


async def test_a_number_is_not_a_time(client: httpx.AsyncClient, operator: dict[str, str]) -> None:
    resp = await client.get("/api/v1/bookings", params={"start": "0.5"}, headers=operator)
    assert_clear_422(resp, "ISO 8601")


# -- machines --------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["kind", "name", "driver", "enabled", "notes"])
async def test_patch_machine_with_a_null_required_field_is_422(
    client: httpx.AsyncClient, operator: dict[str, str], field: str
) -> None:
    machine = await make_machine(client, operator)
    resp = await client.patch(
        f"/api/v1/machines/{machine['id']}", json={field: None}, headers=operator
    )
    assert_clear_422(resp, f"{field} cannot be null")
    unchanged = (await client.get(f"/api/v1/machines/{machine['id']}", headers=operator)).json()
    assert unchanged["kind"] == "fdm_printer"
    assert unchanged["name"] == MANUAL["name"]


async def test_patch_machine_may_still_clear_the_build_volume(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    machine = await make_machine(client, operator, build_volume_mm={"x": 200, "y": 200, "z": 200})
    resp = await client.patch(
        f"/api/v1/machines/{machine['id']}", json={"build_volume_mm": None}, headers=operator
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["build_volume_mm"] is None


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN"])
async def test_non_finite_numbers_are_refused_and_the_machine_list_keeps_working(
    client: httpx.AsyncClient, operator: dict[str, str], member: dict[str, str], value: str
) -> None:
    # httpx refuses to encode Infinity, so the body is written out as a browser script could.
    body = (
        '{"name": "Mill", "kind": "cnc_mill", "driver": "manual", '
        f'"capabilities": {{"spindle_max_rpm": {value}}}}}'
    )
    resp = await client.post(
        "/api/v1/machines",
        content=body,
        headers={**operator, "Content-Type": "application/json"},
    )
    assert_clear_422(resp, "spindle_max_rpm", "finite")
    listed = await client.get("/api/v1/machines", headers=member)
    assert listed.status_code == 200
    assert listed.json() == []


async def test_non_finite_simulator_options_are_refused(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    body = (
        '{"name": "Sim", "kind": "fdm_printer", "driver": "sim-marlin", '
        '"connection": {"home_s": Infinity}}'
    )
    resp = await client.post(
        "/api/v1/machines", content=body, headers={**operator, "Content-Type": "application/json"}
    )
    assert_clear_422(resp, "home_s must be a finite number")


async def test_true_is_not_a_number(client: httpx.AsyncClient, operator: dict[str, str]) -> None:
    resp = await client.put(
        "/api/v1/rates/machine-kinds/fdm_printer", json={"cents_per_hour": True}, headers=operator
    )
    assert_clear_422(resp, "valid integer")


async def test_deleting_a_machine_that_jobs_refer_to_is_409_saying_disable_it(
    client: httpx.AsyncClient, operator: dict[str, str], member: dict[str, str]
) -> None:
    machine = await make_machine(
        client, operator, name="Printer", driver="marlin", connection={"port": "/dev/ttyACM0"}
    )
    job = await client.post(
        "/api/v1/jobs",
        files={"file": ("part.gcode", b"G28\nG1 X10 Y10 F3000\n", "text/plain")},
        data={"machine_id": str(machine["id"])},
        headers=member,
    )
    assert job.status_code == 201, job.text
    resp = await client.delete(f"/api/v1/machines/{machine['id']}", headers=operator)
    assert resp.status_code == 409, resp.text
    assert "disable it instead" in resp.json()["detail"]
    still = await client.get(f"/api/v1/machines/{machine['id']}", headers=operator)
    assert still.status_code == 200
