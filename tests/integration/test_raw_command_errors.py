"""A raw command GRBL refuses (error:N) is reported as refused, not as ok."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.test_supervised_jobs import add_mill

pytestmark = pytest.mark.timeout(120)


async def test_marlin_command_sent_to_grbl_reports_ok_false(
    live_client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    mill = await add_mill(live_client, operator)
    resp = await live_client.post(
        f"/api/v1/machines/{mill['id']}/commands",
        json={"lines": ["M105", "G0 X1"]},
        headers=operator,
    )
    assert resp.status_code == 200, resp.text
    refused, moved = resp.json()["results"]
    assert refused["ok"] is False
    assert "Unsupported or invalid g-code command" in refused["error"]
    assert moved["ok"] is True
