"""OctoPrint driver without a server: error translation, URLs, timeouts, settings."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from octorest import OctoRest

from drivers.base import (
    AuthFailed,
    DriverError,
    MachineOffline,
    MachineState,
    Program,
    ProtocolError,
)
from drivers.http_host import safe_upload_name
from drivers.octoprint import (
    OctoPrintClient,
    OctoPrintDriver,
    TimeoutSession,
    octoprint_state,
    translate_error,
)
from drivers.registry import driver_class
from tests.peers.octoprint_server import free_port

URL = "http://printer.local/"


def octorest_error(
    status: int, body: str, url: str = "http://printer.local/api/job"
) -> RuntimeError:
    """Return the bare RuntimeError octorest 0.4 raises for an HTTP error."""
    return RuntimeError(f"Reply for {url} was not OK: {body} ({status})")


class TestErrorTranslation:
    """octorest raises bare RuntimeErrors; operators get AuthFailed, MachineOffline, DriverError."""

    @pytest.mark.parametrize("status", [401, 403])
    def test_refused_key_is_auth_failed(self, status: int) -> None:
        body = json.dumps(
            {"error": "You don't have the permission to access the requested resource."}
        )
        err = translate_error(octorest_error(status, body), url=URL, action="reading the job")
        assert type(err) is AuthFailed
        assert f"HTTP {status}" in str(err)
        assert "API key" in str(err)

    def test_conflict_keeps_octoprints_reason(self) -> None:
        body = json.dumps({"error": "Printer is neither printing nor paused"}, indent=2)
        err = translate_error(octorest_error(409, body), url=URL, action="pausing the print")
        assert type(err) is DriverError
        assert str(err) == (
            "OctoPrint refused pausing the print (HTTP 409): Printer is neither printing nor paused"
        )

    def test_html_error_page_is_made_readable(self) -> None:
        body = "<!doctype html><html><title>404 Not Found</title><h1>Not Found</h1></html>"
        err = translate_error(octorest_error(404, body), url=URL, action="reading the job")
        assert type(err) is DriverError
        assert "<" not in str(err)
        assert "is the URL right?" in str(err)

    def test_proxy_gateway_errors_mean_offline(self) -> None:
        err = translate_error(octorest_error(502, "Bad Gateway"), url=URL, action="reading the job")
        assert type(err) is MachineOffline

    def test_connection_refused_is_offline(self) -> None:
        exc = requests.ConnectionError("HTTPConnectionPool(...): [Errno 111] Connection refused")
        err = translate_error(exc, url=URL, action="checking the API key")
        assert type(err) is MachineOffline
        assert "connection refused" in str(err)
        assert URL in str(err)

    def test_timeout_is_offline(self) -> None:
        err = translate_error(requests.ReadTimeout("read timed out"), url=URL, action="x")
        assert type(err) is MachineOffline
        assert "did not answer in time" in str(err)

    def test_non_json_answer_is_protocol_error(self) -> None:
        err = translate_error(ValueError("Expecting value"), url=URL, action="reading the job")
        assert type(err) is ProtocolError

    def test_secret_is_redacted(self) -> None:
        exc = octorest_error(500, "key ABCDEF123 is weird")
        err = translate_error(exc, url=URL, action="x", secret="ABCDEF123")
        assert "ABCDEF123" not in str(err)


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("Operational", MachineState.IDLE),
        ("Printing", MachineState.RUNNING),
        ("Printing from SD", MachineState.RUNNING),
        ("Pausing", MachineState.RUNNING),
        ("Cancelling", MachineState.RUNNING),
        ("Finishing", MachineState.RUNNING),
        ("Paused", MachineState.PAUSED),
        ("Detecting serial connection", MachineState.CONNECTING),
        ("Error", MachineState.ERROR),
        ("Offline after error", MachineState.ERROR),
        ("Offline", MachineState.OFFLINE),
        ("Unknown State (42)", MachineState.OFFLINE),
    ],
)
def test_octoprint_state_texts(text: str, state: MachineState) -> None:
    assert octoprint_state(text) is state


def test_upload_names_are_safe_and_unique() -> None:
    prog = Program.from_text("../Bracket v2 (final).GCODE", "G1 X1\n")
    a, b = safe_upload_name(prog), safe_upload_name(prog)
    assert a != b
    assert a.startswith("mf-bracket-v2-final-")
    assert a.endswith(".gcode")
    assert all(c.isalnum() or c in "-." for c in a)


def test_registry_knows_the_driver() -> None:
    assert driver_class("octoprint") is OctoPrintDriver
    assert OctoPrintDriver.secret_fields == frozenset({"api_key"})


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"url": "printer.local", "api_key": "k"}, "http(s)://"),
        ({"url": "ftp://printer.local", "api_key": "k"}, "http(s)://"),
        ({"url": "http://printer.local"}, "api_key"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], needle: str) -> None:
    with pytest.raises(DriverError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        OctoPrintDriver(settings)


# -- a recording HTTP server standing in for OctoPrint --------------------------------


class Recorder:
    """An HTTP server on 127.0.0.1 that records request paths and answers canned JSON."""

    def __init__(self, status: int = 200) -> None:
        self.paths: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.paths.append(self.path)
                body = json.dumps({"server": "1.11.8", "api": "0.1"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.close()


def test_sub_path_is_kept(recorder: Recorder) -> None:
    """octorest 0.4 drops the path of http://host/octoprint/; our client keeps it."""
    url = f"http://127.0.0.1:{recorder.port}/octoprint/"
    OctoRest(url=url).get_version()
    OctoPrintClient(url=url, api_key="k", timeout_s=2).get_version()
    OctoPrintClient(url=url.rstrip("/"), api_key="k", timeout_s=2).get_version()
    assert recorder.paths == ["/api/version", "/octoprint/api/version", "/octoprint/api/version"]


def test_wizard_is_never_called(recorder: Recorder) -> None:
    """octorest's wizard() calls /setup/wizard; our client refuses instead of calling it."""
    client = OctoPrintClient(url=f"http://127.0.0.1:{recorder.port}/", api_key="k", timeout_s=2)
    with pytest.raises(DriverError, match="wizard"):
        client.wizard()
    with pytest.raises(DriverError, match="wizard"):
        client.finish_wizards([])
    assert recorder.paths == []


def test_session_sets_timeouts() -> None:
    """octorest 0.4 sets no timeout; every request through our session has one."""
    session = TimeoutSession(7.0)
    assert session.get_adapter("http://x/").timeout == (5.0, 7.0)  # type: ignore[attr-defined]
    assert session.get_adapter("https://x/").timeout == (5.0, 7.0)  # type: ignore[attr-defined]
    assert TimeoutSession(1.0).timeout == (1.0, 1.0)


async def test_silent_server_times_out_as_offline() -> None:
    """A server that accepts connections but never answers fails fast, not forever."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        driver = OctoPrintDriver(
            {"url": f"http://127.0.0.1:{port}", "api_key": "k", "timeout_s": 2}
        )
        connecting = asyncio.create_task(driver.connect())
        # The blocking request runs in a thread: the loop keeps turning meanwhile.
        await asyncio.sleep(0.05)
        assert not connecting.done()
        with pytest.raises(MachineOffline, match="did not answer in time"):
            await connecting
        status = await driver.status()
        assert status.state is MachineState.OFFLINE
        assert "did not answer in time" in status.message
        await driver.close()


async def test_unreachable_port_is_offline_with_a_clear_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    key = "SECRET-KEY-1234567890"
    driver = OctoPrintDriver({"url": f"http://127.0.0.1:{port}/", "api_key": key})
    caplog.set_level(logging.DEBUG)
    with pytest.raises(MachineOffline) as info:
        await driver.connect()
    assert str(info.value) == (
        f"cannot reach OctoPrint at http://127.0.0.1:{port}/ while checking the API key: "
        "connection refused (nothing listens there: is OctoPrint running?)"
    )
    await driver.close()
    assert key not in caplog.text


async def test_commands_before_connect_are_refused() -> None:
    driver = OctoPrintDriver({"url": URL, "api_key": "k"})
    with pytest.raises(DriverError, match="connect first"):
        await driver.pause()
    with pytest.raises(DriverError, match="one command at a time"):
        await driver.send("G28\nG1 X1")


def test_backoff_doubles_and_is_capped() -> None:
    driver = OctoPrintDriver(
        {"url": URL, "api_key": "k", "poll_interval_s": 1, "max_backoff_s": 30}
    )
    waits = []
    for failures in (0, 1, 2, 3, 4, 5, 100_000):
        driver._failures = failures
        waits.append(driver._next_poll_s())
    assert waits == [1, 2, 4, 8, 16, 30, 30]
