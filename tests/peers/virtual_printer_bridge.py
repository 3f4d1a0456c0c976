"""Run OctoPrint's VirtualPrinter (an independent Marlin implementation) on a pty.

Run it with the python of OctoPrint's venv:

    .octoprint-venv/bin/python tests/peers/virtual_printer_bridge.py [options]

It prints the pty path on its first stdout line; a driver opens that path as it would open
/dev/ttyUSB0. VirtualPrinter is meant to sit behind OctoPrint's serial layer: `write()` takes
bytes (and blocks while its 64-byte rx queue is full), `readline()` hands out one reply at a
time. The bridge moves bytes between those calls and the pty master. Replies go out exactly
as VirtualPrinter produces them: many do not end in a newline ("ok", "wait", "Resend:5"), and
the driver must cope with that (`--terminate` adds the missing newlines, for comparison).

VirtualPrinter needs a settings object; it only reads its plugin settings through get,
get_int, get_float, get_boolean and global_get_basefolder, so a small stub over the plugin's
own defaults (VirtualPrinterPlugin.get_settings_defaults) stands in for octoprint.settings.

VirtualPrinter's protocol code runs exactly as shipped, with its default simulated errors
(100:resend, 105:resend_with_timeout, 110:missing_lineno, 115:checksum_mismatch) unless
`--simulated-errors` says otherwise: nothing corrects its resend counter or its other quirks.
The only interventions are observation (the recorder wraps `command_regex.match`, which
sees every command it runs) and, with `--motion-scale`, the duration of its move sleeps.

Extras for tests and benchmarks:
- `--record FILE`: every command VirtualPrinter executes is appended to FILE, one a line;
- `--corrupt-rate P --seed S`: damage one byte in a fraction P of the lines the host sends;
- `--motion-scale K`: multiply VirtualPrinter's simulated move time (0: moves take no time);
- `--simulated-errors 20:resend,30:checksum_mismatch|none`: VirtualPrinter's own error
  injection instead of its defaults;
- `--set key=JSON`: any other VirtualPrinter setting (e.g. okFormatString).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import select
import signal
import sys
import tempfile
import termios
import threading
import time
import tty
from typing import Any

from octoprint.plugins.virtual_printer import VirtualPrinterPlugin, virtual
from serial import SerialTimeoutException

_real_time = time
_tls = threading.local()


class _ScaledTime:
    """virtual.py's `time` module, with sleeps inside moves scaled (see BridgedPrinter)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_real_time, name)

    def sleep(self, seconds: float) -> None:
        scale = getattr(_tls, "motion_scale", 1.0)
        if scale > 0:
            _real_time.sleep(seconds * scale)


class _NoPlugins:
    """The plugin manager VirtualPrinter asks for custom-action hooks: there are none."""

    def get_hooks(self, name: str) -> dict[str, Any]:
        return {}


class StubSettings:
    """The part of octoprint.settings a VirtualPrinter reads, over the plugin's defaults."""

    def __init__(self, values: dict[str, Any], basedir: str) -> None:
        self._values = values
        self._basedir = basedir

    def get(self, path: list[str], merged: bool = False, **_: Any) -> Any:
        node: Any = self._values
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return json.loads(json.dumps(node))  # a copy, as octoprint.settings returns

    def get_int(self, path: list[str], **_: Any) -> int | None:
        value = self.get(path)
        return None if value is None else int(value)

    def get_float(self, path: list[str], **_: Any) -> float | None:
        value = self.get(path)
        return None if value is None else float(value)

    def get_boolean(self, path: list[str], **_: Any) -> bool:
        value = self.get(path)
        if isinstance(value, str):
            return value.lower() in ("true", "yes", "y", "1", "on")
        return bool(value)

    def global_get_basefolder(self, name: str, **_: Any) -> str:
        folder = os.path.join(self._basedir, name)
        os.makedirs(folder, exist_ok=True)
        return folder


class _Recorder:
    """Wraps VirtualPrinter.command_regex: its match() sees every command that runs."""

    def __init__(self, regex: Any, path: str | None) -> None:
        self._regex = regex
        self._file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        self.count = 0

    def match(self, data: str) -> Any:
        if data.strip():  # VirtualPrinter passes empty lines through here too
            self.count += 1
            if self._file is not None:
                self._file.write(data.strip() + "\n")
                self._file.flush()
        return self._regex.match(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._regex, name)


class BridgedPrinter(virtual.VirtualPrinter):
    """VirtualPrinter with its move time scaled by --motion-scale (time only, not protocol)."""

    motion_scale = 1.0

    # _performMove sleeps in slices of _read_timeout; with moves taking no time, a long move
    # (VirtualPrinter starts in relative mode, so absolute coordinates add up) would spin
    # through millions of empty slices. Inside a move the slice is infinite instead.
    @property
    def _read_timeout(self) -> float:
        if getattr(_tls, "motion_scale", 1.0) == 0:
            return float("inf")
        return self._bridge_read_timeout

    @_read_timeout.setter
    def _read_timeout(self, value: float) -> None:
        self._bridge_read_timeout = value

    def _performMove(self, line: str) -> None:  # noqa: N802 - VirtualPrinter's name
        _tls.motion_scale = self.motion_scale
        try:
            super()._performMove(line)
        finally:
            _tls.motion_scale = 1.0


def _write_all(fd: int, data: bytes, stop: threading.Event) -> None:
    while data and not stop.is_set():
        try:
            n = os.write(fd, data)
            data = data[n:]
        except BlockingIOError:
            select.select([], [fd], [], 0.1)
        except OSError:
            return


class Bridge:
    """Moves bytes between a pty master and a VirtualPrinter."""

    def __init__(self, printer: virtual.VirtualPrinter, args: argparse.Namespace) -> None:
        self.printer = printer
        self.terminate = args.terminate
        self.corrupt_rate = args.corrupt_rate
        self.latency = args.latency_ms / 1000.0
        self._delayed: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self.rng = random.Random(args.seed)
        self.stats = {"lines_from_host": 0, "lines_corrupted": 0, "unterminated_replies": 0}
        self.stop = threading.Event()
        self.master_fd, self._slave_fd = os.openpty()
        tty.setraw(self.master_fd, termios.TCSANOW)
        tty.setraw(self._slave_fd, termios.TCSANOW)
        os.set_blocking(self.master_fd, False)
        self.path = os.ttyname(self._slave_fd)
        self._acc = bytearray()

    def _corrupt(self, line: bytes) -> bytes:
        self.stats["lines_from_host"] += 1
        if self.corrupt_rate <= 0 or self.rng.random() >= self.corrupt_rate or len(line) < 2:
            return line
        # Only bytes before "*": VirtualPrinter's reader thread dies on a checksum that is
        # not a number (int() raises), which would test nothing but that.
        body = bytearray(line[:-1])
        star = body.rfind(b"*")
        i = self.rng.randrange(star if star > 0 else len(body))
        body[i] = self.rng.choice([c for c in b"0123456789XYZEGN .-" if c != body[i]])
        self.stats["lines_corrupted"] += 1
        return bytes(body) + b"\n"

    def host_to_printer(self) -> None:
        """Read what the host writes and feed it to VirtualPrinter, line by line."""
        while not self.stop.is_set():
            ready, _, _ = select.select([self.master_fd], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(self.master_fd, 4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                time.sleep(0.05)  # nobody has the slave open yet
                continue
            self._acc.extend(data)
            while (idx := self._acc.find(b"\n")) >= 0:
                line = self._corrupt(bytes(self._acc[: idx + 1]))
                del self._acc[: idx + 1]
                self._feed(line)

    def _feed(self, data: bytes) -> None:
        # Hand over only what fits in its 64-byte rx queue: VirtualPrinter.write() blocks on
        # a full queue while holding _incoming_lock, which its reader needs to report a
        # checksum error, so a blocking write stalls every error by write_timeout.
        incoming = self.printer.incoming
        while data and not self.stop.is_set() and incoming is not None:
            space = incoming.maxsize - incoming.qsize()
            if space <= 0:
                time.sleep(0.0005)
                continue
            try:
                written = self.printer.write(data[:space])
            except SerialTimeoutException:
                continue
            data = data[written:]

    def printer_to_host(self) -> None:
        """Copy each VirtualPrinter reply to the pty, as produced."""
        while not self.stop.is_set():
            try:
                item = self.printer.readline()
            except SerialTimeoutException:
                continue
            except Exception:  # its queues vanish when it is closed
                if self.stop.is_set() or self.printer.outgoing is None:
                    return
                raise
            if not item:
                continue
            if not item.endswith(b"\n"):
                self.stats["unterminated_replies"] += 1
                if self.terminate:
                    item += b"\n"
            if self.latency:
                self._delayed.put((time.monotonic() + self.latency, item))
            else:
                _write_all(self.master_fd, item, self.stop)

    def delay_line(self) -> None:
        """Write replies `latency` after VirtualPrinter made them, in order (a USB adapter)."""
        while not self.stop.is_set():
            try:
                due, item = self._delayed.get(timeout=0.1)
            except queue.Empty:
                continue
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            _write_all(self.master_fd, item, self.stop)

    def close(self) -> None:
        """Stop both directions and close the pty."""
        self.stop.set()
        self.printer.close()
        for fd in (self.master_fd, self._slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", help="append each executed command to this file")
    parser.add_argument("--stats", help="write bridge statistics (JSON) here on exit")
    parser.add_argument("--corrupt-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--motion-scale", type=float, default=1.0)
    parser.add_argument(
        "--simulated-errors",
        default=None,
        help="e.g. 20:resend,30:checksum_mismatch; 'none' for none; default: VirtualPrinter's "
        "own (100:resend, 105:resend_with_timeout, 110:missing_lineno, 115:checksum_mismatch)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay every reply (USB adapter latency)"
    )
    parser.add_argument("--terminate", action="store_true", help="end every reply with \\n")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Start VirtualPrinter on a pty, print the path, bridge until SIGTERM/SIGINT."""
    args = _parse_args(argv)
    values = VirtualPrinterPlugin.get_settings_defaults(None)
    values["enabled"] = True
    if args.simulated_errors is not None:  # else the plugin's defaults, as shipped
        errors = "" if args.simulated_errors == "none" else args.simulated_errors
        values["simulated_errors"] = [e for e in errors.split(",") if e]
    for item in args.set:
        key, _, raw = item.partition("=")
        values[key] = json.loads(raw)
    basedir = tempfile.mkdtemp(prefix="virtual-printer-")
    virtual.plugin_manager = lambda: _NoPlugins()
    recorder = _Recorder(virtual.VirtualPrinter.command_regex, args.record)
    virtual.VirtualPrinter.command_regex = recorder
    printer_class: type[virtual.VirtualPrinter] = virtual.VirtualPrinter
    if args.motion_scale != 1.0:
        virtual.time = _ScaledTime()
        BridgedPrinter.motion_scale = args.motion_scale
        printer_class = BridgedPrinter
    data_folder = os.path.join(basedir, "data")
    os.makedirs(data_folder, exist_ok=True)
    printer = printer_class(
        StubSettings(values, basedir), None, data_folder, read_timeout=0.5, write_timeout=0.3
    )
    bridge = Bridge(printer, args)
    threads = [
        threading.Thread(target=bridge.host_to_printer, name="host->vp", daemon=True),
        threading.Thread(target=bridge.printer_to_host, name="vp->host", daemon=True),
        threading.Thread(target=bridge.delay_line, name="latency", daemon=True),
    ]
    for thread in threads:
        thread.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(bridge.path, flush=True)
    while not done.wait(0.5):
        pass
    bridge.close()
    if args.stats:
        with open(args.stats, "w", encoding="utf-8") as fh:
            json.dump({**bridge.stats, "executed": recorder.count}, fh)
    sys.stdout.flush()
    # VirtualPrinter's RepeatedTimer threads (M155, M27) are not daemons: leave without them.
    os._exit(0)


if __name__ == "__main__":
    main()
