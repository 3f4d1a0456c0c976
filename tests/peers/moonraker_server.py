"""Start the real Moonraker server in front of the Klippy emulator, for integration tests.

Moonraker runs from its own virtual environment (scripts/moonraker-venv.sh), binds
127.0.0.1 on a free port and keeps its data (config, database, gcodes, logs) in a short
temporary directory: unix socket paths are limited to 107 bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.peers.klippy_emulator import KlippyEmulator
from tests.peers.octoprint_server import free_port

REPO = Path(__file__).resolve().parents[2]
VERSION = "0.11.0"


def venv_path() -> Path:
    """Return where the Moonraker virtual environment is expected."""
    return Path(os.environ.get("MICROFACTORY_MOONRAKER_VENV") or REPO / ".moonraker-venv")


def moonraker_python(venv: Path | None = None) -> Path | None:
    """Return the venv's python when Moonraker is installed in it, else None."""
    root = venv or venv_path()
    python = root / "bin" / "python"
    if not python.exists() or not list(root.glob("lib/python3*/site-packages/moonraker")):
        return None
    return python


CONFIG = """\
[server]
host: 127.0.0.1
port: {port}
klippy_uds_address: {uds}

[authorization]
trusted_clients:
    127.0.0.0/8
cors_domains:
    *://127.0.0.1

[file_manager]
enable_object_processing: False
queue_gcode_uploads: False

[machine]
provider: none
validate_service: False
validate_config: False
"""


@dataclass
class MoonrakerServer:
    """One Moonraker process and the Klippy emulator behind it."""

    python: Path
    line_time_s: float = 0.01
    speed_factor: float | None = None  # the emulator's print speed-up over planned time
    # Klippy says it is installed in the gcodes folder: Moonraker then refuses every upload.
    klipper_in_gcodes: bool = False
    port: int = field(default_factory=free_port)
    datadir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mf-mr-")))
    process: subprocess.Popen[bytes] | None = None
    klippy: KlippyEmulator | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gcodes(self) -> Path:
        return self.datadir / "gcodes"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the emulator and Moonraker; return once Moonraker reports Klippy ready."""
        for sub in ("config", "gcodes", "logs", "comms", "database"):
            (self.datadir / sub).mkdir(parents=True, exist_ok=True)
        uds = self.datadir / "comms" / "klippy.sock"
        (self.datadir / "config" / "moonraker.conf").write_text(
            CONFIG.format(port=self.port, uds=uds), encoding="utf-8"
        )
        if self.klippy is None:
            self.klippy = KlippyEmulator(
                uds,
                self.gcodes,
                line_time_s=self.line_time_s,
                speed_factor=self.speed_factor,
                klipper_path=self.gcodes if self.klipper_in_gcodes else None,
            )
            self.klippy.start()
        self.start_moonraker(timeout_s)

    def start_moonraker(self, timeout_s: float = 30.0) -> None:
        """Start Moonraker alone (the emulator keeps running); return once Klippy is ready."""
        log = (self.datadir / "logs" / "stdout.log").open("ab")
        self.process = subprocess.Popen(
            [str(self.python), "-m", "moonraker", "-d", str(self.datadir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Moonraker exited at startup: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                info = httpx.get(f"{self.url}/server/info", timeout=2).json()["result"]
                if info.get("klippy_state") == "ready":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Moonraker did not get ready: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        """Return the end of Moonraker's own log, for failure messages."""
        path = self.datadir / "logs" / "moonraker.log"
        if not path.exists():
            path = self.datadir / "logs" / "stdout.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self) -> None:
        """Stop Moonraker, then the emulator, and remove the data directory."""
        self.stop_moonraker()
        if self.klippy is not None:
            self.klippy.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)

    def stop_moonraker(self) -> None:
        """Stop Moonraker alone; Klippy (the emulator) prints on, as on a real printer."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
