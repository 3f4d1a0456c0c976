"""The real PrusaLink (PyPI `prusalink` 0.8.1) on 127.0.0.1, in front of a Prusa firmware
stand-in on a pty, for the tests that can use it (docs/prusalink.md says what works).

PrusaLink for the MK3 talks to the printer over serial. `PrusaFirmwareStub` answers the
questions PrusaLink asks at startup as Prusa firmware 3.14 does (`PRUSA Fir`, `M862.2 Q`,
`M862.1 Q`, `PRUSA SN`, `M115`, `M220`/`M221`, `M27 P`, `M420`, temperatures) and `ok`s
the rest. That is enough for PrusaLink's HTTP API, its digest auth and API key, and its
status; PrusaLink's fuller printer polling (EEPROM reads with D3, sheet settings, ...) is not
answered, so PrusaLink reports the printer BUSY and does not print.

Its settings (the digest of the user and password, the API key) are written as the first-run
wizard would, into a folder under /var/tmp: PrusaLink ignores storages under /tmp.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx

from tests.peers.octoprint_server import free_port

REPO = Path(__file__).resolve().parents[2]
REALM = "Administrator"

_ANSWERS: tuple[tuple[str, str], ...] = (
    ("PRUSA FIR", "3.14.1-8237"),
    ("PRUSA SN", "CZPX4720X004XC34242"),
    ("M862.2", "302"),  # an MK3S
    ("M862.1", "0.40"),
    ("M220", "100%"),
    ("M221", "100%"),
    ("M27", "Not SD printing"),
    ("M420", "Mesh bed leveling not active."),
    (
        "M115",
        "FIRMWARE_NAME:Prusa-Firmware 3.14.1 based on Marlin "
        "FIRMWARE_URL:https://github.com/prusa3d/Prusa-Firmware PROTOCOL_VERSION:1.0 "
        "MACHINE_TYPE:Prusa i3 MK3S EXTRUDER_COUNT:1 UUID:00000000-0000-0000-0000-000000000000",
    ),
)


def venv_path() -> Path:
    return Path(os.environ.get("MICROFACTORY_PRUSALINK_VENV") or REPO / ".prusalink-venv")


def prusalink_executable() -> Path | None:
    exe = venv_path() / "bin" / "prusalink"
    return exe if exe.is_file() else None


class PrusaFirmwareStub:
    """Answers PrusaLink's startup questions on a pty, as Prusa firmware would."""

    def __init__(self) -> None:
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self.received: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="prusa-fw")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        buffer = b""
        os.write(self._master, b"start\n")
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.1)
            if not ready:
                continue
            try:
                buffer += os.read(self._master, 4096)
            except OSError:
                return
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode(errors="replace").strip()
                if not line:
                    continue  # a bare newline gets no "ok" from the firmware either
                command = re.sub(r"\*\d+$", "", re.sub(r"^N\d+\s+", "", line))
                self.received.append(command)
                # A board answers in milliseconds; PrusaLink misses an answer that comes
                # back before it has noted the command as sent.
                time.sleep(0.01)
                os.write(self._master, (self._answer(command) + "\n").encode())

    @staticmethod
    def _answer(command: str) -> str:
        upper = command.upper()
        if upper.startswith("M105"):
            return "ok T:24.0 /0.0 B:23.5 /0.0 T0:24.0 /0.0 @:0 B@:0 P:0.0 A:30.0"
        for prefix, answer in _ANSWERS:
            if upper.startswith(prefix):
                return f"{answer}\nok"
        return "ok"


class RealPrusaLink:
    """The real PrusaLink daemon in the foreground, on a free port, with known credentials."""

    def __init__(
        self,
        *,
        user: str = "maker",
        password: str = "prusa-link-pass-1",
        api_key: str = "prusalink-key-0123",
    ) -> None:
        self.user = user
        self.password = password
        self.api_key = api_key
        self.port = free_port()
        self.firmware = PrusaFirmwareStub()
        self.dir = Path(tempfile.mkdtemp(prefix="mf-prusalink-", dir="/var/tmp"))
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        data = self.dir / "data"
        gcodes = self.dir / "gcodes"
        data.mkdir(exist_ok=True)
        gcodes.mkdir(exist_ok=True)
        digest = hashlib.md5(
            f"{self.user}:{REALM}:{self.password}".encode(), usedforsecurity=False
        ).hexdigest()
        settings = data / "prusa_printer_settings.ini"
        settings.write_text(
            "[printer]\ntype = MK3S\nname = microfactory test\nlocation = tests\n\n"
            f"[service::local]\nenable = 1\nusername = {self.user}\ndigest = {digest}\n"
            f"api_key = {self.api_key}\n"
        )
        me = getpass.getuser()
        config = self.dir / "prusalink.ini"
        config.write_text(
            f"[daemon]\ndata_dir = {data}\npid_file = {data / 'prusalink.pid'}\n"
            f"power_panic_file = {data / 'power_panic'}\nthreshold_file = {data / 'threshold'}\n"
            f"user = {me}\ngroup = {me}\n\n"
            f"[http]\naddress = 127.0.0.1\nport = {self.port}\n\n"
            f"[printer]\nport = {self.firmware.port}\nsettings = {settings}\n"
            f"directory = {gcodes}\n"
        )
        return config

    def start(self, timeout_s: float = 60.0) -> None:
        exe = prusalink_executable()
        assert exe is not None, "PrusaLink is not installed (scripts/prusalink-venv.sh)"
        self.firmware.start()
        config = self._write_config()
        self._log = (self.dir / "prusalink.log").open("wb")
        self._process = subprocess.Popen(
            [str(exe), "-f", "-c", str(config), "-s", self.firmware.port],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"PrusaLink exited; see {self.dir / 'prusalink.log'}")
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(
                    f"{self.url}/api/v1/status",
                    headers={"X-Api-Key": self.api_key},
                    timeout=2,
                    trust_env=False,
                )
                if answer.status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"PrusaLink did not answer in {timeout_s:g} s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.firmware.stop()
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_prusalink() -> Iterator[RealPrusaLink]:
    server = RealPrusaLink()
    try:
        server.start()
        yield server
    finally:
        server.stop()
