"""Hub test fixtures: a hub app on each backend, and shops that sign reports as the contract says.

The shop side is another helper's code; these shops build the report in the contract's exact
shape, serialise it with RFC 8785 and sign it with joserfc, as a shop does.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from joserfc import jws
from joserfc.jwk import OKPKey

from microfactory.config import Settings

_names = itertools.count(1)


def iso(t: dt.datetime) -> str:
    """Return a UTC time as the contract writes it."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fdm(
    model: str, x: float, y: float, z: float, materials: list[str], quantity: int = 1
) -> dict[str, Any]:
    """Return an FDM printer's OKW equipment entry."""
    return {
        "process": "fdm_printing",
        "equipmentType": "https://en.wikipedia.org/wiki/3D_printing",
        "manufacturingProcess": "https://en.wikipedia.org/wiki/Fused_filament_fabrication",
        "make": "Prusa",
        "model": model,
        "quantity": quantity,
        "materialsWorked": materials,
        "workVolume": {"x": x, "y": y, "z": z},
        "buildVolume": {"x": x, "y": y, "z": z},
        "nozzleSize": 0.4,
    }


def laser(
    model: str, x: float, y: float, materials: list[str], power: float = 40
) -> dict[str, Any]:
    """Return a laser cutter's OKW equipment entry."""
    return {
        "process": "laser_cutting",
        "equipmentType": "https://en.wikipedia.org/wiki/Laser_cutting",
        "manufacturingProcess": "https://en.wikipedia.org/wiki/Laser_cutting",
        "make": "Trotec",
        "model": model,
        "quantity": 1,
        "materialsWorked": materials,
        "workVolume": {"x": x, "y": y, "z": 0},
        "xTravel": x,
        "yTravel": y,
        "laserPower": power,
    }


class Shop:
    """A shop with its own Ed25519 key that makes and signs capacity reports."""

    def __init__(
        self,
        name: str | None = None,
        *,
        lat: float = 51.05,
        lon: float = 3.72,
        equipment: list[dict[str, Any]] | None = None,
        hours_per_day: float = 10.0,
        waits: dict[str, float] | None = None,
    ) -> None:
        self.name = name or f"Shop {next(_names)}"
        self.key = OKPKey.generate_key("Ed25519")
        self.shop_id = self.key.thumbprint()
        self.lat, self.lon = lat, lon
        self.equipment = (
            equipment if equipment is not None else [fdm("MK4", 250, 210, 220, ["PLA", "PETG"])]
        )
        self.hours: dict[tuple[str, str], list[float]] = {}
        for e in self.equipment:
            for m in e["materialsWorked"]:
                self.hours[(e["process"], m)] = [hours_per_day] * 7
        self.waits = waits or {}
        self.sequence = 0

    def public_jwk(self) -> dict[str, Any]:
        """Return the public key as the report carries it."""
        return {"kty": "OKP", "crv": "Ed25519", "x": self.key.as_dict(private=False)["x"]}

    def report(
        self,
        *,
        now: dt.datetime | None = None,
        sequence: int | None = None,
        ttl_s: int = 900,
        issued: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """Return a report in the contract's shape (each call takes the next sequence)."""
        now = now or dt.datetime.now(dt.UTC)
        issued = issued or now
        if sequence is None:
            self.sequence += 1
            sequence = self.sequence
        today = issued.date()
        processes = sorted({e["process"] for e in self.equipment})
        return {
            "type": "microfactory.capacity/1",
            "shop_id": self.shop_id,
            "key": self.public_jwk(),
            "okw": {
                "name": self.name,
                "url": "http://127.0.0.1:8001",
                "description": "a test shop",
                "contact": "hello@example.org",
                "location": {
                    "city": "Gent",
                    "country": "BE",
                    "gpsCoordinates": {"lat": self.lat, "lon": self.lon},
                },
                "facilityStatus": "Active",
                "accessType": "Public",
                "manufacturingProcesses": [e["manufacturingProcess"] for e in self.equipment],
                "typicalMaterials": sorted(
                    {m for e in self.equipment for m in e["materialsWorked"]}
                ),
                "equipment": self.equipment,
            },
            "live": {
                "issuedAt": iso(issued),
                "expiresAt": iso(issued + dt.timedelta(seconds=ttl_s)),
                "sequence": sequence,
                "timezone": "UTC",
                "freeHours": [
                    {
                        "date": (today + dt.timedelta(days=i)).isoformat(),
                        "process": process,
                        "material": material,
                        "hours": hours[i],
                    }
                    for (process, material), hours in sorted(self.hours.items())
                    for i in range(7)
                ],
                "queue": [
                    {
                        "process": p,
                        "depth": 1 if self.waits.get(p) else 0,
                        "waitHours": self.waits.get(p, 0.0),
                    }
                    for p in processes
                ],
                "materials": [],
            },
        }

    def sign(self, payload: dict[str, Any], alg: str = "Ed25519", key: OKPKey | None = None) -> str:
        """Sign a report: RFC 8785 payload, header {"alg", "kid"}, compact JWS."""
        header = {"alg": alg, "kid": self.shop_id}
        return jws.serialize_compact(
            header, rfc8785.dumps(payload), key or self.key, algorithms=[alg]
        )

    def jws(self, **kwargs: Any) -> str:
        """Return the next signed report."""
        return self.sign(self.report(**kwargs))


def tamper(token: str, change: Any) -> str:
    """Return the JWS with its payload changed (canonical again) and the old signature kept."""
    import json

    head, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    change(data)
    body = base64.urlsafe_b64encode(rfc8785.dumps(data)).rstrip(b"=").decode()
    return f"{head}.{body}.{sig}"


JOSE = {"Content-Type": "application/jose"}


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """A closed hub that publishes its reports (tests open it where they need to)."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        log_json=False,
        run_supervisors=False,
        hub=True,
        hub_open=False,
        network_publish=True,
    )


@pytest.fixture
def open_hub(app: Any) -> Any:
    """Make the hub pin new shops on first use."""
    app.state.settings = app.state.settings.model_copy(update={"hub_open": True})
    return app
