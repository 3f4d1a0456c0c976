"""A PrusaLink peer for the tests: PrusaLink's v1 REST API on 127.0.0.1, over real HTTP.

The real PrusaLink (PyPI `prusalink` 0.8.1, for an MK3 with a Raspberry Pi) installs and
starts here (docs/prusalink.md), but printing through it needs a Prusa firmware simulator
that answers its serial protocol line for line (M27 P, M73, SD listings, `// action:`
prompts...), which this project does not have. So the driver's tests run against this
server, written from PrusaLink's OpenAPI description (Prusa-Link-Web `spec/openapi.yaml`)
and the answers the real PrusaLink gives (its error bodies `{"title", "message"}`, 204 from
`GET /api/v1/job` when no job runs, 403 "Bad X-Api-Key.", digest auth with the realm
"Administrator" and MD5-sess).

What it serves: `GET /api/version`, `/api/v1/info`, `/api/v1/status`, `/api/v1/storage`,
`/api/v1/job`; `PUT /api/v1/files/{storage}/{path}` (with `Print-After-Upload` and
`Overwrite`: 201; 409 if the file exists, 413 when the storage has no room, 415 for what is
not G-code, 409 "Not in state to print"), `POST` on a file (start it: 204, or 409), `HEAD`
and `DELETE` on a file; `PUT /api/v1/job/{id}/pause|resume` and `DELETE /api/v1/job/{id}`
(204; 404 "Not Current Job"; 409 "Printer Is Not Printing|Paused"). Every endpoint asks for
HTTP digest (RFC 7616, qop=auth, MD5-sess) or the X-Api-Key.

The printer behind it (`PrusaPrinter`) runs the file's command lines, each taking the time
our own planner (drivers/planner.py) gives its move under Marlin's stock limits, divided by
`speed_factor` (as tests/peers/klippy_emulator.py does); heating is instant. It keeps
printing while the HTTP server is stopped: `restart()` stops the server and starts a new one
on the same port, with new nonces, as a PrusaLink restart mid-job looks to a client.

Limits, on purpose: one storage (`/local`), no folders, no thumbnails or metadata beyond the
file's size, no cameras, transfers or legacy (OctoPrint-style) endpoints; `ATTENTION` and
`ERROR` come only from the tests (`attention()`, `error()`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from drivers.base import clean_lines
from drivers.planner import MachineLimits
from tests.peers.klippy_emulator import planned_times
from tests.peers.octoprint_server import free_port

REALM = "Administrator"  # the real PrusaLink's digest realm
SERIAL = "CZPX4720X004XC34242"
PRINTABLE = (".gcode", ".gco", ".g", ".bgcode")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class PrusaPrinter:
    """The printer PrusaLink drives: its state, temperatures and the job it prints."""

    def __init__(self, storage: Path, *, speed_factor: float = 10.0) -> None:
        self.storage = storage
        self.speed_factor = speed_factor
        self.lock = threading.RLock()
        self.free_space = 1 << 30
        self._job_counter = 100
        self.reset()

    def reset(self) -> None:
        """Back to IDLE with no job and the heaters off (between tests)."""
        with self.lock:
            self.state = "IDLE"
            self.message = ""
            self.temps = {"nozzle": [24.0, 0.0], "bed": [23.5, 0.0]}
            self.job_id: int | None = None
            self.job_path: str | None = None
            self.lines: list[str] = []
            self.times: list[float] = []
            self.done = 0
            self.time_printing = 0.0
            self._run = threading.Event()
            self._thread: threading.Thread | None = None

    # -- what the tests do at the printer ------------------------------------------

    def error(self, message: str) -> None:
        """A firmware fault: the print stops and the printer shows the message."""
        with self.lock:
            self.state = "ERROR"
            self.message = message
            self._end_job()

    def attention(self, message: str) -> None:
        """The printer waits for an operator (filament runout, a prompt)."""
        with self.lock:
            self.state = "ATTENTION"
            self.message = message

    # -- jobs --------------------------------------------------------------------------

    def start(self, path: str) -> None:
        """Start printing a stored file; raise ValueError(title, message) if it cannot."""
        with self.lock:
            if self.state not in ("IDLE", "READY", "FINISHED", "STOPPED"):
                raise ValueError("Not in state to print", "Printer is not in state to print.")
            file = self.storage / path.lstrip("/")
            text = file.read_text(encoding="utf-8", errors="replace")
            self.lines = clean_lines(text.splitlines())
            self.times = [
                t / self.speed_factor for t in planned_times(self.lines, MachineLimits.marlin())
            ]
            self._job_counter += 1
            self.job_id = self._job_counter
            self.job_path = "/local/" + path.lstrip("/")
            self.done = 0
            self.time_printing = 0.0
            self.state = "PRINTING"
            self.message = ""
            self._thread = threading.Thread(target=self._print, daemon=True, name="prusa-print")
            self._thread.start()

    def _print(self) -> None:
        tick = 0.01
        budget = 0.0
        while True:
            time.sleep(tick)
            with self.lock:
                if self.state not in ("PRINTING", "PAUSED", "ATTENTION") or self.job_id is None:
                    return
                if self.state != "PRINTING":
                    continue
                self.time_printing += tick
                budget += tick
                while self.done < len(self.lines) and budget >= self.times[self.done]:
                    budget -= self.times[self.done]
                    self._run_line(self.lines[self.done])
                    self.done += 1
                if self.done >= len(self.lines):
                    self.state = "FINISHED"
                    self._end_job()
                    return

    def _run_line(self, line: str) -> None:
        words = line.split()
        code = words[0].upper()
        heater = {"M104": "nozzle", "M109": "nozzle", "M140": "bed", "M190": "bed"}.get(code)
        if heater is None:
            return
        for word in words[1:]:
            if word[:1].upper() == "S":
                with contextlib.suppress(ValueError):
                    target = float(word[1:])
                    self.temps[heater] = [target if target else 24.0, target]

    def _end_job(self) -> None:
        self.job_id = None  # PrusaLink's job goes IDLE: no job in the status any more
        self.job_path = None

    def pause(self) -> None:
        with self.lock:
            if self.state != "PRINTING":
                raise ValueError("Printer Is Not Printing", "Printer is not printing.")
            self.state = "PAUSED"

    def resume(self) -> None:
        with self.lock:
            if self.state not in ("PAUSED", "ATTENTION"):
                raise ValueError("Printer Is Not Paused", "Printer is not paused.")
            self.state = "PRINTING"
            self.message = ""

    def stop(self) -> None:
        with self.lock:
            if self.state not in ("PRINTING", "PAUSED", "ATTENTION"):
                raise ValueError("Printer Is Not Printing", "Printer is not printing.")
            self.state = "STOPPED"
            self.temps = {"nozzle": [self.temps["nozzle"][0], 0.0], "bed": [23.5, 0.0]}
            self._end_job()

    def progress(self) -> tuple[float, int, int]:
        """Return (percent, seconds printing, seconds remaining) of the job."""
        total = sum(self.times) or 1e-9
        spent = sum(self.times[: self.done])
        percent = round(100.0 * self.done / max(len(self.lines), 1), 1)
        return percent, int(self.time_printing), max(0, round(total - spent))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: the tests' output is for the tests

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # a client (or stop()) dropped the connection
            super().handle()

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b""
        content_type = "application/json"
        if isinstance(body, str):
            data, content_type = body.encode(), "text/plain"
        elif body is not None:
            data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Server", "PrusaLink")
        if data:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, title: str, message: str) -> None:
        self._send(status, {"title": title, "message": message})

    def _authorized(self) -> bool:
        peer = self.server.peer
        key = self.headers.get("X-Api-Key")
        if key is not None:
            if peer.api_key and secrets.compare_digest(key, peer.api_key):
                return True
            self._send(403, "Bad X-Api-Key.")
            return False
        header = self.headers.get("Authorization", "")
        if header.startswith("Digest ") and self._digest_ok(header[7:]):
            return True
        nonce = secrets.token_hex(16)
        self.server.nonces.add(nonce)
        challenge = (
            f'Digest realm="{REALM}",qop="auth",algorithm="MD5-sess",'
            f'nonce="{nonce}",opaque="{self.server.opaque}"'
        )
        self._send(401, "401 - Unauthorized", {"WWW-Authenticate": challenge})
        return False

    def _digest_ok(self, value: str) -> bool:
        fields = {k: a or b for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', value)}
        peer = self.server.peer
        if fields.get("nonce") not in self.server.nonces or fields.get("username") != peer.user:
            return False
        if fields.get("uri") != self.path or fields.get("qop") != "auth":
            return False
        ha1 = _md5(f"{peer.user}:{REALM}:{peer.password}")
        if fields.get("algorithm", "MD5").upper() == "MD5-SESS":
            ha1 = _md5(f"{ha1}:{fields['nonce']}:{fields.get('cnonce', '')}")
        ha2 = _md5(f"{self.command}:{fields['uri']}")
        expected = _md5(
            f"{ha1}:{fields['nonce']}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:auth:{ha2}"
        )
        return secrets.compare_digest(expected, fields.get("response", ""))

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _route(self) -> None:
        body = self._body()  # read it first, so that the connection stays usable
        self.server.peer.requests.append((self.command, self.path))
        if not self._authorized():
            return
        path = unquote(urlsplit(self.path).path)
        peer = self.server.peer
        printer = peer.printer
        method = self.command
        files = re.fullmatch(r"/api/v1/files/(?P<storage>[^/]+)/(?P<path>.+)", path)
        job = re.fullmatch(r"/api/v1/job/(?P<id>\d+)(?:/(?P<command>pause|resume))?", path)
        if method == "GET" and path == "/api/version":
            self._send(200, peer.version())
        elif method == "GET" and path == "/api/v1/info":
            self._send(200, peer.info())
        elif method == "GET" and path == "/api/v1/status":
            self._send(200, peer.status())
        elif method == "GET" and path == "/api/v1/storage":
            self._send(200, {"storage_list": [peer.storage_entry()]})
        elif method == "GET" and path == "/api/v1/job":
            current = peer.job()
            self._send(200, current) if current else self._send(204)
        elif files is not None:
            self._files(method, files["storage"], files["path"], body)
        elif job is not None and method in ("PUT", "DELETE"):
            with printer.lock:
                if printer.job_id != int(job["id"]):
                    self._error(404, "Not Current Job", "Job with this id is not current.")
                    return
                try:
                    if method == "DELETE" and job["command"] is None:
                        printer.stop()
                    elif method == "PUT" and job["command"] == "pause":
                        printer.pause()
                    elif method == "PUT" and job["command"] == "resume":
                        printer.resume()
                    else:
                        self._error(405, "Method Not Allowed", "Method not allowed.")
                        return
                except ValueError as exc:
                    self._error(409, *exc.args)
                    return
            self._send(204)
        else:
            self._error(404, "Not Found", f"{method} {path} is not served.")

    def _files(self, method: str, storage: str, name: str, body: bytes) -> None:
        peer = self.server.peer
        printer = peer.printer
        if storage != "local":
            self._error(404, "Location Not Found", f"Storage {storage} not found.")
            return
        file = printer.storage / name
        if "/" in name or name.startswith("."):
            self._error(400, "Forbidden Characters", "Forbidden characters in file name.")
        elif method == "PUT":
            if not name.lower().endswith(PRINTABLE):
                self._error(
                    415, "Unsupported Media Type", "Only G-Code for FDM printer can be uploaded."
                )
            elif file.exists() and self.headers.get("Overwrite") != "?1":
                self._error(409, "File Already Exists", "File already exists.")
            elif len(body) > printer.free_space:
                self._error(413, "Request Entity Too Large", "Not enough space in storage.")
            else:
                file.write_bytes(body)
                peer.uploads.append(name)
                if self.headers.get("Print-After-Upload") == "?1":
                    try:
                        printer.start(name)
                    except ValueError as exc:
                        self._error(409, *exc.args)
                        return
                self._send(201)
        elif not file.is_file():
            self._error(404, "File Not Found", "File not found.")
        elif method == "POST":
            try:
                printer.start(name)
            except ValueError as exc:
                self._error(409, *exc.args)
                return
            self._send(204)
        elif method == "HEAD":
            printed = printer.job_path == f"/local/{name}"
            self._send(200, headers={"Read-Only": "false", "Currently-Printed": str(printed)})
        elif method == "DELETE":
            if printer.job_path == f"/local/{name}":
                self._error(409, "File is currently printed", "File is currently printed.")
                return
            file.unlink()
            self._send(204)
        elif method == "GET":
            stat = file.stat()
            self._send(
                200,
                {
                    "name": name,
                    "display_name": name,
                    "read_only": False,
                    "size": stat.st_size,
                    "type": "PRINT_FILE",
                    "m_timestamp": int(stat.st_mtime),
                },
            )
        else:
            self._error(405, "Method Not Allowed", "Method not allowed.")

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _route  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, peer: PrusaLinkServer, port: int) -> None:
        self.peer = peer
        self.nonces: set[str] = set()  # a restart forgets them, as PrusaLink's new key does
        self.opaque = secrets.token_hex(16)
        self.connections: set[socket.socket] = set()  # kept-alive ones, closed by stop()
        super().__init__(("127.0.0.1", port), _Handler)


class PrusaLinkServer:
    """PrusaLink's v1 API in front of a `PrusaPrinter`, on its own thread."""

    def __init__(
        self,
        storage: Path,
        *,
        user: str = "maker",
        password: str = "prusa-link-pass-1",
        api_key: str | None = "prusalink-key-0123",
        speed_factor: float = 10.0,
    ) -> None:
        storage.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.password = password
        self.api_key = api_key
        self.printer = PrusaPrinter(storage, speed_factor=speed_factor)
        self.port = free_port()
        self.requests: list[tuple[str, str]] = []  # (method, path), for the tests
        self.uploads: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = _Server(self, self.port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving; the printer goes on with its job."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            for conn in list(server.connections):  # PrusaLink going down drops them all
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop and start again on the same port (new nonces), as PrusaLink restarting."""
        self.stop()
        time.sleep(down_s)
        self.start()

    # -- the answers -------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        return {
            "api": "2.0.0",
            "server": "0.8.1",
            "original": "PrusaLink MK3S",
            "text": "PrusaLink 0.8.1",
            "firmware": "3.14.1-8237",
            "sdk": "0.8.1",
            "capabilities": {"upload-by-put": True},
            "hostname": "prusa-mk3s",
        }

    def info(self) -> dict[str, Any]:
        return {
            "name": "MK3S test peer",
            "location": "tests",
            "farm_mode": False,
            "network_error_chime": False,
            "nozzle_diameter": 0.4,
            "min_extrusion_temp": 170,
            "serial": SERIAL,
            "hostname": "prusa-mk3s",
            "port": "/dev/ttyAMA0",
        }

    def storage_entry(self) -> dict[str, Any]:
        printer = self.printer
        return {
            "name": "PrusaLink gcodes",
            "type": "LOCAL",
            "path": "/local",
            "print_files": sum(1 for _ in printer.storage.iterdir()),
            "free_space": printer.free_space,
            "total_space": printer.free_space * 2,
            "available": True,
            "read_only": False,
        }

    def status(self) -> dict[str, Any]:
        p = self.printer
        with p.lock:
            printer: dict[str, Any] = {
                "state": p.state,
                "temp_nozzle": p.temps["nozzle"][0],
                "target_nozzle": p.temps["nozzle"][1],
                "temp_bed": p.temps["bed"][0],
                "target_bed": p.temps["bed"][1],
                "axis_z": 0.2,
                "flow": 100,
                "speed": 100,
                "fan_hotend": 0,
                "fan_print": 0,
                "status_printer": {"ok": not p.message, "message": p.message or "OK"},
                "status_connect": {"ok": False, "message": "Not configured"},
            }
            if p.state not in ("PRINTING", "BUSY"):  # as PrusaLink: X and Y only at rest
                printer["axis_x"] = 0.0
                printer["axis_y"] = 0.0
            out: dict[str, Any] = {
                "storage": {
                    "name": "PrusaLink gcodes",
                    "path": "/local",
                    "read_only": False,
                    "free_space": p.free_space,
                },
                "printer": printer,
            }
            if p.job_id is not None:
                percent, printing, remaining = p.progress()
                out["job"] = {
                    "id": p.job_id,
                    "progress": percent,
                    "time_remaining": remaining,
                    "time_printing": printing,
                }
            return out

    def job(self) -> dict[str, Any] | None:
        p = self.printer
        with p.lock:
            if p.job_id is None or p.job_path is None:
                return None
            name = p.job_path.rsplit("/", 1)[-1]
            percent, printing, remaining = p.progress()
            size = (p.storage / name).stat().st_size
            return {
                "file": {
                    "name": name,
                    "display_name": name,
                    "path": "/local",
                    "display_path": "/PrusaLink gcodes",
                    "size": size,
                    "m_timestamp": int(time.time()),
                },
                "id": p.job_id,
                "state": p.state,
                "progress": percent,
                "time_remaining": remaining,
                "time_printing": printing,
                "inaccurate_estimates": False,
            }
