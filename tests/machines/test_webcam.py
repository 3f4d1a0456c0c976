"""The webcam proxy: a tiny local MJPEG camera behind basic auth, and one that is not there."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from microfactory.accounts.models import Role
from microfactory.machines import webcam
from tests.conftest import UserFactory

pytestmark = pytest.mark.timeout(60)

JPEG = b"\xff\xd8\xff\xe0" + b"tiny-jpeg" * 10 + b"\xff\xd9"
AUTH = "Basic " + base64.b64encode(b"cam:s3cret").decode()


class Camera:
    """An MJPEG camera on the loopback: /stream (frames every 20 ms) and /snap, basic auth."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.requests: list[str] = []

    async def __aenter__(self) -> Camera:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            path = head.split(" ", 2)[1]
            self.requests.append(path)
            if f"authorization: {AUTH}".lower() not in head.lower():
                writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            elif path.split("?")[0] == "/snap":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
                    + f"Content-Length: {len(JPEG)}\r\n\r\n".encode()
                    + JPEG
                )
            elif path == "/stream":
                writer.write(
                    b"HTTP/1.1 200 OK\r\n"
                    b"Content-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n"
                )
                while True:  # until the proxy hangs up
                    writer.write(
                        b"--frame\r\nContent-Type: image/jpeg\r\n"
                        + f"Content-Length: {len(JPEG)}\r\n\r\n".encode()
                        + JPEG
                        + b"\r\n"
                    )
                    await writer.drain()
                    await asyncio.sleep(0.02)
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there any more


@pytest.fixture
async def camera() -> AsyncIterator[Camera]:
    async with Camera() as cam:
        yield cam


async def _printer(
    client: httpx.AsyncClient, operator: dict[str, str], name: str = "Printer"
) -> int:
    resp = await client.post(
        "/api/v1/machines",
        json={"name": name, "kind": "fdm_printer", "driver": "manual"},
        headers=operator,
    )
    assert resp.status_code == 201, resp.text
    return int(resp.json()["id"])


def _cookie(headers: dict[str, str]) -> dict[str, str]:
    """The same token as a dashboard session cookie (what a logged-in browser sends)."""
    return {"Cookie": f"mf_session={headers['Authorization'].removeprefix('Bearer ')}"}


async def test_webcam_proxy(
    client: httpx.AsyncClient,
    make_user: UserFactory,
    camera: Camera,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One app and two users for both cases (hashing their passwords is most of the cost)."""
    operator = (await make_user(Role.OPERATOR))[1]
    member = (await make_user(Role.MEMBER))[1]
    await credentials_stay_on_the_server(client, operator, member, camera, monkeypatch)
    await an_unreachable_or_refusing_camera_is_a_clear_502(client, operator, camera)
    await the_page_asks_the_status_before_showing_the_camera(client, operator, member, camera)


async def credentials_stay_on_the_server(
    client: httpx.AsyncClient,
    operator: dict[str, str],
    member: dict[str, str],
    camera: Camera,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mid = await _printer(client, operator)
    base = f"http://cam:s3cret@127.0.0.1:{camera.port}"
    body = {"stream_url": f"{base}/stream", "snapshot_url": f"{base}/snap?token=abc"}
    refused = await client.put(f"/api/v1/machines/{mid}/webcam", json=body, headers=member)
    assert refused.status_code == 403
    stored = await client.put(f"/api/v1/machines/{mid}/webcam", json=body, headers=operator)
    assert stored.status_code == 200, stored.text
    assert "s3cret" not in stored.text
    assert "abc" not in stored.text
    assert stored.json()["stream_url"] == f"http://****@127.0.0.1:{camera.port}/stream"
    bad = await client.put(
        f"/api/v1/machines/{mid}/webcam", json={"stream_url": "ftp://x/y"}, headers=operator
    )
    assert bad.status_code == 422

    page = await client.get(f"/machines/{mid}", headers=_cookie(member))
    assert page.status_code == 200
    assert f"/machines/{mid}/webcam/stream" in page.text
    assert "s3cret" not in page.text
    assert str(camera.port) not in page.text  # not even where the camera is
    # A member sees the graph, the status and the job, but no controls and no terminal.
    assert 'id="temp-graph"' not in page.text  # a manual printer has no heaters to graph
    assert "Maintenance log" in page.text
    assert "data-terminal" not in page.text
    assert "data-reset" not in page.text

    snap = await client.get(f"/machines/{mid}/webcam/snapshot", headers=_cookie(member))
    assert snap.status_code == 200
    assert snap.headers["content-type"] == "image/jpeg"
    assert snap.content == JPEG

    monkeypatch.setattr(webcam, "STREAM_MAX_S", 0.3)  # the relay ends by itself
    stream = await client.get(f"/machines/{mid}/webcam/stream", headers=_cookie(member))
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("multipart/x-mixed-replace; boundary=frame")
    assert stream.content.count(b"--frame") >= 2
    assert JPEG in stream.content
    assert camera.requests == ["/snap?token=abc", "/stream"]

    anonymous = await client.get(f"/machines/{mid}/webcam/snapshot", follow_redirects=False)
    assert anonymous.status_code in (302, 303)  # to the login page: no picture for strangers


async def an_unreachable_or_refusing_camera_is_a_clear_502(
    client: httpx.AsyncClient, operator: dict[str, str], camera: Camera
) -> None:
    mid = await _printer(client, operator, "Printer 2")
    cookie = _cookie(operator)
    none = await client.get(f"/machines/{mid}/webcam/stream", headers=cookie)
    assert none.status_code == 404
    assert "no webcam" in none.text

    await client.put(
        f"/api/v1/machines/{mid}/webcam",
        json={"stream_url": f"http://127.0.0.1:{closed_port()}/stream"},
        headers=operator,
    )
    away = await client.get(f"/machines/{mid}/webcam/stream", headers=cookie)
    assert away.status_code == 502
    assert "cannot be reached: the connection failed" in away.text
    page = await client.get(f"/machines/{mid}", headers=cookie)
    assert "The webcam cannot be reached right now." in page.text  # the page's placeholder

    # Wrong credentials: the camera says 401, we say what it said.
    await client.put(
        f"/api/v1/machines/{mid}/webcam",
        json={"snapshot_url": f"http://cam:b4dpass@127.0.0.1:{camera.port}/snap"},
        headers=operator,
    )
    refused = await client.get(f"/machines/{mid}/webcam/snapshot", headers=cookie)
    assert refused.status_code == 502
    assert "HTTP 401" in refused.text
    assert "b4dpass" not in refused.text

    gone = await client.delete(f"/api/v1/machines/{mid}/webcam", headers=operator)
    assert gone.status_code == 204
    assert (await client.get(f"/api/v1/machines/{mid}/webcam", headers=operator)).json() == {
        "stream_url": None,
        "snapshot_url": None,
    }


async def the_page_asks_the_status_before_showing_the_camera(
    client: httpx.AsyncClient, operator: dict[str, str], member: dict[str, str], camera: Camera
) -> None:
    """`/webcam/status` is always 200 and says in words why a camera cannot be shown."""
    mid = await _printer(client, operator, "Printer 3")
    status = f"/machines/{mid}/webcam/status"
    anonymous = await client.get(status, follow_redirects=False)
    assert anonymous.status_code in (302, 303)
    none = await client.get(status, headers=_cookie(member))
    assert none.status_code == 200
    assert none.json() == {
        "configured": False,
        "available": False,
        "kind": None,
        "message": "This machine has no webcam.",
    }
    page = await client.get(f"/machines/{mid}", headers=_cookie(member))
    assert "data-webcam" not in page.text  # nothing to load, nothing to fail

    away_port = closed_port()
    await client.put(
        f"/api/v1/machines/{mid}/webcam",
        json={"stream_url": f"http://cam:s3cret@127.0.0.1:{away_port}/stream"},
        headers=operator,
    )
    page = await client.get(f"/machines/{mid}", headers=_cookie(member))
    assert f'data-status="{status}"' in page.text
    assert f' src="/machines/{mid}/webcam/stream"' not in page.text  # not before the status
    away = await client.get(status, headers=_cookie(member))
    assert away.status_code == 200
    assert away.json()["available"] is False
    assert away.json()["kind"] == "stream"
    assert away.json()["message"] == "The webcam cannot be reached: the connection failed."
    assert str(away_port) not in away.text
    assert "s3cret" not in away.text

    base = f"http://cam:s3cret@127.0.0.1:{camera.port}"
    await client.put(
        f"/api/v1/machines/{mid}/webcam",
        json={"stream_url": f"{base}/stream", "snapshot_url": f"{base}/snap"},
        headers=operator,
    )
    seen = len(camera.requests)
    on = await client.get(status, headers=_cookie(member))
    assert on.json() == {
        "configured": True, "available": True, "kind": "stream", "message": "The webcam is on."
    }  # fmt: skip
    assert camera.requests[seen:] == ["/stream"]  # asked once, and hung up

    await client.put(
        f"/api/v1/machines/{mid}/webcam",
        json={"snapshot_url": f"http://cam:b4dpass@127.0.0.1:{camera.port}/snap"},
        headers=operator,
    )
    refused = await client.get(status, headers=_cookie(member))
    assert refused.json()["kind"] == "snapshot"
    assert refused.json()["message"] == "The webcam cannot be reached: it answered HTTP 401."
