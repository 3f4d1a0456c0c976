"""Serial I/O native to asyncio (after Moonraker's utils/async_serial.py).

pyserial opens the port with timeout=0; the file descriptor is registered with
`loop.add_reader`, and writes go out in FIFO order through `loop.add_writer` when the
kernel buffer is full. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Callable
from typing import Any

import serial

from drivers.base import MachineOffline


class AsyncSerialLink:
    """A serial port (or pty) read line by line and written in order, on the event loop."""

    def __init__(self, port: str, baudrate: int = 115200) -> None:
        self.port = port
        self.baudrate = baudrate
        self._serial: serial.Serial | None = None
        self._fd: int | None = None
        self._rxbuf = bytearray()
        self._lines: collections.deque[bytes] = collections.deque()
        self._line_ready = asyncio.Event()
        self._txbuf = bytearray()
        self._tx_drained = asyncio.Event()
        self._tx_drained.set()
        self._closed_reason: str | None = None
        self.bytes_written = 0
        self.bytes_read = 0
        #: If set, each complete line is handed to it from the reader callback, at once and
        #: in order, instead of being queued for readline() (one task switch less per line).
        self.on_line: Callable[[bytes], None] | None = None

    @property
    def is_open(self) -> bool:
        """Return whether the port is open and has not failed."""
        return self._fd is not None and self._closed_reason is None

    async def open(self) -> None:
        """Open the port; raise MachineOffline with the OS's reason if it cannot be."""
        try:
            ser = await asyncio.to_thread(
                serial.Serial,
                self.port,
                self.baudrate,
                timeout=0,
                write_timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise MachineOffline(f"cannot open serial port {self.port}: {exc}") from exc
        self._serial = ser
        self._fd = ser.fileno()
        os.set_blocking(self._fd, False)
        self._closed_reason = None
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)

    def close(self, reason: str = "closed") -> None:
        """Close the port; pending readers wake up with MachineOffline."""
        loop = asyncio.get_event_loop()
        if self._fd is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._fd)
            with contextlib.suppress(Exception):
                loop.remove_writer(self._fd)
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()
        self._serial = None
        self._fd = None
        if self._closed_reason is None:
            self._closed_reason = reason
        self._line_ready.set()
        self._tx_drained.set()

    # -- reading -----------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.close(f"serial link lost: {exc}")
            return
        if not data:
            self.close("serial link lost: the device closed")
            return
        self.bytes_read += len(data)
        self._rxbuf.extend(data)
        while True:
            idx = self._rxbuf.find(b"\n")
            if idx < 0:
                break
            line = bytes(self._rxbuf[:idx]).rstrip(b"\r")
            del self._rxbuf[: idx + 1]
            if self.on_line is not None:
                self.on_line(line)
                if self._fd is None:
                    return  # the handler closed the link
            else:
                self._lines.append(line)
        if self._lines:
            self._line_ready.set()

    def pending_partial(self) -> bytes:
        """Return bytes received after the last newline (some peers omit the newline)."""
        return bytes(self._rxbuf)

    def take_partial(self) -> bytes:
        """Take and clear the bytes received after the last newline."""
        data = bytes(self._rxbuf)
        self._rxbuf.clear()
        return data

    async def readline(self, timeout: float) -> str:  # noqa: ASYNC109 (a per-call budget)
        """Return the next line (without its newline); raise TimeoutError after `timeout` s."""
        async with asyncio.timeout(timeout):
            while not self._lines:
                if self._closed_reason is not None:
                    raise MachineOffline(self._closed_reason)
                self._line_ready.clear()
                await self._line_ready.wait()
        line = self._lines.popleft()
        return line.decode("utf-8", errors="replace")

    def discard_input(self) -> None:
        """Drop everything received so far."""
        self._lines.clear()
        self._rxbuf.clear()

    # -- writing -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes to send, in order (a FIFO, never a stack)."""
        if not self.is_open:
            raise MachineOffline(self._closed_reason or f"serial port {self.port} is not open")
        self._txbuf.extend(data)
        self._flush()

    def _flush(self) -> None:
        if self._fd is None:
            return
        try:
            n = os.write(self._fd, self._txbuf)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self.close(f"serial link lost: {exc}")
            return
        self.bytes_written += n
        del self._txbuf[:n]
        loop = asyncio.get_running_loop()
        if self._txbuf:
            if self._tx_drained.is_set():
                self._tx_drained.clear()
                loop.add_writer(self._fd, self._flush)
        elif not self._tx_drained.is_set():
            loop.remove_writer(self._fd)
            self._tx_drained.set()

    async def drain(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (per-call budget)
        """Wait until every queued byte has been handed to the kernel."""
        async with asyncio.timeout(timeout):
            await self._tx_drained.wait()
        if self._closed_reason is not None:
            raise MachineOffline(self._closed_reason)

    def settings(self) -> dict[str, Any]:
        """Return the port settings, for status reports."""
        return {"port": self.port, "baudrate": self.baudrate}
