"""Marlin over USB serial: numbered, checksummed lines streamed ahead within the buffers.

This module is the I/O shell. The protocol itself (line numbers, the in-flight window,
resends, ok accounting, timeouts) lives in `drivers.marlin_protocol.MarlinProtocol`, which
has no I/O and an injected clock. Here a reader task splits the peer's bytes into reply
lines and hands each to the core; whatever the core wants written is written; a timer
runs the core's `tick()` when its `deadline()` is due; a ticker task polls temperatures
and is the watchdog's backstop. No call blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from drivers.base import (
    Driver,
    DriverError,
    EventKind,
    FirmwareError,
    MachineBusy,
    MachineOffline,
    MachineState,
    Program,
    Progress,
    ProtocolError,
    Status,
    Temperature,
    strip_comment,
)
from drivers.marlin_protocol import (
    _CAP_RE,
    _ENDS_WITH_TOKEN,
    _FIRMWARE_NAME_RE,
    HEATING_COMMANDS,
    LONG_COMMANDS,
    Cmd,
    ErrorClass,
    MarlinProtocol,
    Reply,
    ReplyKind,
    checksum,
    classify_error,
    command_code,
    format_line,
    parse_motion_limits,
    parse_position,
    parse_reply,
    parse_temperatures,
    split_replies,
)
from drivers.serial_io import AsyncSerialLink

log = logging.getLogger(__name__)

__all__ = [
    "HEATING_COMMANDS",
    "LONG_COMMANDS",
    "REALTIME_COMMANDS",
    "ErrorClass",
    "MarlinDriver",
    "Reply",
    "ReplyKind",
    "checksum",
    "classify_error",
    "command_code",
    "format_line",
    "parse_position",
    "parse_reply",
    "parse_temperatures",
    "split_replies",
]

#: Commands send() accepts while a program runs: they are answered without disturbing it.
#: M105 and M114 go through the numbered stream like any line; M108 and M112 bypass it.
REALTIME_COMMANDS = frozenset({"M105", "M114", "M108", "M112"})


@dataclass(slots=True)
class _Waiter:
    """A send() caller waiting for the reply lines of its command."""

    future: asyncio.Future[list[str]]
    lines: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Tag:
    """What the driver needs to know about a command when the firmware accepts it."""

    job_index: int | None = None  # index in the program, for progress
    waiter: _Waiter | None = None
    is_poll: bool = False  # an M105 the driver sent itself
    motion_end: bool = False  # the M400 that ends a job: its ok means the motion is over


@dataclass(slots=True)
class _Job:
    program: Program
    started_at: float
    next_index: int = 0  # next program line to hand to the protocol core
    acked: int = 0
    last_acked: str | None = None
    paused: bool = False
    cancelling: bool = False
    motion_wait: Cmd | None = None  # the closing M400, once every line is acknowledged
    motion_done: bool = False
    acked_all_at: float | None = None


class MarlinDriver(Driver):
    """A Marlin printer on a serial port: send-ahead streaming with resends and checksums."""

    name = "marlin"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        s = self.settings
        # Marlin's default BUFSIZE is 4 command slots; 4 lines in flight never spill into
        # the 128-byte receive buffer (docs/bench-marlin.md).
        self.window = max(1, int(s.get("window", 4)))
        # Measure which window (full, 2 or 1 lines) streams fastest on this link and keep it
        # (drivers/marlin_protocol.py, _WindowTuner); False: always the full window.
        self.window_autotune = bool(s.get("window_autotune", True))
        self.buffer_slots = max(1, int(s.get("buffer_slots", 4)))
        self.rx_buffer = int(s.get("rx_buffer", 128))
        # An unanswered line is sent again after this long (never a failure).
        self.line_timeout_s = float(s.get("line_timeout_s", 3.0))
        # Nothing at all from the printer for this long while waiting: the link is gone.
        self.dead_after_s = float(s.get("dead_after_s", 60.0))
        self.timeout_s = float(s.get("timeout_s", 30.0))  # stop commands on cancel
        self.long_timeout_s = float(s.get("long_timeout_s", 900.0))
        self.connect_timeout_s = float(s.get("connect_timeout_s", 10.0))
        self.poll_interval_s = float(s.get("poll_interval_s", 2.0))
        self.poll_interval_job_s = float(s.get("poll_interval_job_s", 5.0))
        self.autoreport_interval_s = int(s.get("autoreport_interval_s", 2))
        self.max_resends = int(s.get("max_resends", 10))
        self.clean_lines = int(s.get("clean_lines", 16))
        self.tick_interval_s = float(s.get("tick_interval_s", 0.2))
        self.read_settings_at_connect = bool(s.get("read_settings", True))
        # Marlin acknowledges a move once it is planned, so the last `ok` of a job comes
        # while up to 15 planner blocks still run: the job is finished when the M400 sent
        # after it is acknowledged (Marlin answers M400 once the planner is empty).
        self.wait_for_motion = bool(s.get("wait_for_motion", True))
        # Bytes after the last newline are taken as a line once the peer has been quiet this
        # long (peers such as VirtualPrinter do not end every reply with a newline).
        self.partial_line_s = float(s.get("partial_line_s", 0.05))
        # After a fault, the firmware must be quiet this long before the host resumes:
        # Marlin drains its receive buffer on an error and every line in flight draws a
        # duplicate request. 2 lines of 96 bytes at 115200 baud take 17 ms.
        baud = int(s.get("baudrate", 115200)) or 115200
        self.resend_settle_s = float(s.get("resend_settle_s", max(0.02, 2 * 96 * 10 / baud)))
        self._link: AsyncSerialLink | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ticker_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._trace = False
        #: Motion limits read from the firmware at connect (see read_settings()).
        self.motion_limits: dict[str, Any] = {}
        self._reset_protocol_state()

    # -- state ----------------------------------------------------------------------------

    def _new_core(self) -> MarlinProtocol:
        core = MarlinProtocol(
            time.monotonic,
            window=self.window,
            buffer_slots=self.buffer_slots,
            rx_buffer=self.rx_buffer,
            line_timeout_s=self.line_timeout_s,
            long_timeout_s=self.long_timeout_s,
            dead_after_s=self.dead_after_s,
            settle_s=self.resend_settle_s,
            clean_lines=self.clean_lines,
            max_resends=self.max_resends,
            autotune=self.window_autotune,
        )
        core.feed = self._feed
        return core

    def _reset_protocol_state(self) -> None:
        self._handshake_q: asyncio.Queue[Reply] | None = None
        self._core = self._new_core()
        self._job: _Job | None = None
        self._halted: str | None = None  # a firmware fault: send nothing more
        self.capabilities: dict[str, bool] = {}
        self._m115_lines: list[str] = []
        self._loose_newlines = False  # the peer glues replies together (VirtualPrinter)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._poll_out = False
        now = time.monotonic()
        self._last_poll = now
        self._last_publish = 0.0

    @property
    def stats(self) -> dict[str, int]:
        """Protocol counters: lines sent, faults, collapsed duplicates, anchors, timeouts."""
        return self._core.stats

    @property
    def _learned_slots(self) -> int | None:
        return self._core.learned_slots

    @property
    def connected(self) -> bool:
        """Return whether the link is open and the handshake is done."""
        return self._link is not None and self._link.is_open and self._handshake_q is None

    async def status(self) -> Status:
        """Return the latest status snapshot with up-to-date progress."""
        if self._job is not None:
            return self._status.evolve(progress=self._progress(), updated_at=time.time())
        return self._status

    def _progress(self) -> Progress | None:
        job = self._job
        if job is None:
            return self._status.progress
        return Progress(
            lines_total=len(job.program.lines),
            lines_sent=job.next_index,
            lines_acked=job.acked,
            started_at=job.started_at,
            last_line=job.last_acked,
        )

    # -- connect and close ----------------------------------------------------------------

    async def connect(self) -> None:
        """Open the port, reset line numbers (M110), read capabilities (M115) and limits."""
        if self.connected:
            return
        port = self.settings.get("port")
        if not port:
            raise DriverError("the marlin driver needs a 'port' setting, e.g. /dev/ttyUSB0")
        baudrate = int(self.settings.get("baudrate", 115200))
        await self._teardown()
        self._reset_protocol_state()
        self._trace = log.isEnabledFor(logging.DEBUG)  # a wire trace, line by line
        self._set_status(state=MachineState.CONNECTING, message=f"connecting to {port}")
        link = AsyncSerialLink(str(port), baudrate)
        try:
            await link.open()
        except MachineOffline as exc:
            self._set_status(state=MachineState.OFFLINE, message=str(exc))
            raise
        self._link = link
        self._handshake_q = asyncio.Queue()
        link.on_line = self._on_raw_line  # replies are handled in the reader callback
        self._reader_task = asyncio.create_task(self._read_loop(link), name=f"marlin-rx {port}")
        try:
            next_n = await self._handshake(str(port), baudrate)
        except BaseException as exc:
            await self._teardown()
            self._set_status(state=MachineState.OFFLINE, message=str(exc))
            raise
        self._core.start(next_n)
        self._handshake_q = None
        self._ticker_task = asyncio.create_task(self._tick_loop(), name=f"marlin-tick {port}")
        if self.read_settings_at_connect:
            try:
                await asyncio.wait_for(self.read_settings(), self.connect_timeout_s)
            except (DriverError, TimeoutError) as exc:
                log.warning("marlin %s: could not read the motion limits: %s", port, exc)
        if self._status.state is MachineState.OFFLINE:
            # The link was lost during the handshake (a firmware still answering a previous
            # session): fail the connect, so that the caller tries again, rather than report
            # a closed link as connected.
            raise MachineOffline(f"the link was lost while connecting: {self._status.message}")
        self._set_status(state=MachineState.IDLE, message="connected")
        log.info(
            "marlin %s connected: %s, capabilities %s",
            port,
            self._status.firmware,
            ",".join(k for k, v in sorted(self.capabilities.items()) if v),
        )

    async def read_settings(self) -> dict[str, Any]:
        """Read the motion limits in force (M503; planner size from M115 or ADVANCED_OK).

        Returns a plain dict with keys named like `MachineLimits` (max_acceleration,
        max_feedrate, max_jerk or junction_deviation, print/retract/travel_acceleration,
        min_extrude/travel_feedrate), plus linear_advance_k, planner_blocks where known,
        "source" and "read_at" (ISO 8601, UTC). Also kept as `self.motion_limits`.
        """
        lines = await self.send("M503")
        limits = parse_motion_limits(lines, self._m115_lines, self._core.idle_planner_free)
        sources = ["M503"]
        if "planner_blocks" in limits:
            in_m115 = parse_motion_limits((), self._m115_lines).get("planner_blocks")
            sources.append("M115" if in_m115 is not None else "ADVANCED_OK")
        self.motion_limits = {
            **limits,
            "source": "+".join(sources) + f" on {self.settings.get('port')}",
            "read_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        return self.motion_limits

    async def _hs_reply(self, until: float) -> Reply:
        assert self._handshake_q is not None
        remaining = until - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError
        return await asyncio.wait_for(self._handshake_q.get(), remaining)

    def _hs_write(self, number: int, command: str) -> None:
        assert self._link is not None
        self._link.write((format_line(number, command) + "\n").encode("ascii"))

    async def _handshake(self, port: str, baudrate: int) -> int:
        """Reset line numbers, read M115, set reporting; return the next line number."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout_s
        # 1. M110 N0 until a clean ok: a board that resets when the port opens (Arduino
        # auto-reset) ignores us for 1-3 s while it boots, so retry every 2 s. A leading
        # newline ends any junk left in the firmware's buffer.
        while True:
            assert self._link is not None
            self._link.write(b"\n")
            self._hs_write(0, "M110 N0")
            attempt_end = min(deadline, loop.time() + 2.0)
            clean, got_ok = True, False
            with contextlib.suppress(TimeoutError):
                while not got_ok:
                    reply = await self._hs_reply(attempt_end)
                    if reply.kind in (ReplyKind.RESEND, ReplyKind.ERROR):
                        clean = False  # junk before our line; it may not have been taken
                    got_ok = reply.kind is ReplyKind.OK
            if got_ok and clean:
                break
            if loop.time() >= deadline:
                raise MachineOffline(
                    f"no answer from a Marlin printer on {port} at {baudrate} baud within "
                    f"{self.connect_timeout_s:.0f} s: check that it is powered on, the port "
                    "is right and the baud rate matches the firmware (115200 or 250000)"
                )
            await asyncio.sleep(0.1)
        # 2. M115: firmware name and capabilities. Late oks of earlier M110 attempts may
        # still arrive, so wait for the ok that follows FIRMWARE_NAME (or give up on the name
        # 1 s after an ok: firmware without M115 answers just "ok").
        self._hs_write(1, "M115")
        firmware: str | None = None
        ok_seen_at: float | None = None
        m115_end = loop.time() + 5.0
        while True:
            until = m115_end if ok_seen_at is None else min(m115_end, ok_seen_at + 1.0)
            try:
                reply = await self._hs_reply(until)
            except TimeoutError:
                if ok_seen_at is not None:
                    break
                raise ProtocolError(
                    f"the printer on {port} answered M110 but not M115 within 5 s"
                ) from None
            if reply.kind is not ReplyKind.OK:
                self._m115_lines.append(reply.text)
            name = _FIRMWARE_NAME_RE.search(reply.text)
            cap = _CAP_RE.match(reply.text)
            if name:
                firmware = name.group(1).strip()
            elif cap:
                self.capabilities[cap.group(1)] = cap.group(2) == "1"
            elif reply.kind is ReplyKind.OK:
                if firmware is not None:
                    break
                ok_seen_at = loop.time()
        next_n = 2
        # 3. Temperature reports: the firmware pushes them (M155) or we poll M105.
        if self.capabilities.get("AUTOREPORT_TEMP"):
            self._hs_write(2, f"M155 S{self.autoreport_interval_s}")
            end = loop.time() + 5.0
            while (await self._hs_reply(end)).kind is not ReplyKind.OK:
                pass
            next_n = 3
        self._set_status(
            firmware=firmware,
            extra={
                "port": port,
                "baudrate": baudrate,
                "capabilities": dict(self.capabilities),
                "autoreport_temp": bool(self.capabilities.get("AUTOREPORT_TEMP")),
            },
        )
        return next_n

    async def close(self) -> None:
        """Close the link; a running program is reported FAILED. Safe to call twice."""
        if self._job is not None:
            self._end_job(EventKind.FAILED, "the connection was closed by the host")
        self._fail_waiters(MachineOffline("the connection was closed"))
        await self._teardown()
        if self._status.state is not MachineState.OFFLINE:
            self._set_status(state=MachineState.OFFLINE, message="closed")

    async def _teardown(self) -> None:
        self._cancel_timer()
        tasks = [t for t in (self._ticker_task, self._reader_task) if t is not None]
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 2.0)
        self._ticker_task = self._reader_task = None
        if self._link is not None:
            self._link.close()
            self._link = None

    # -- program control ------------------------------------------------------------------

    def _require_ready(self) -> None:
        if self._halted is not None:
            raise FirmwareError(
                f"the printer is halted ({self._halted}); reset it and reconnect before "
                "sending anything"
            )
        if not self.connected:
            raise MachineOffline("the printer is not connected")

    async def start(self, program: Program) -> None:
        """Start streaming a program in the background; returns once it is under way."""
        self._require_ready()
        if self._job is not None:
            raise MachineBusy(f"program {self._job.program.name!r} is already running")
        if not program.lines:
            raise DriverError(f"program {program.name!r} has no G-code lines")
        self._job = _Job(program=program, started_at=time.time())
        self._set_status(
            state=MachineState.RUNNING, message=program.name, progress=self._progress()
        )
        self._emit(EventKind.STARTED, program=program.name, lines_total=len(program.lines))
        self._pump()

    async def pause(self) -> None:
        """Stop feeding program lines (lines already in the firmware still run)."""
        job = self._require_job()
        if job.paused:
            return
        job.paused = True
        self._set_status(state=MachineState.PAUSED, progress=self._progress())
        self._emit(EventKind.PAUSED, program=job.program.name)

    async def resume(self) -> None:
        """Feed program lines again after a pause."""
        job = self._require_job()
        if not job.paused:
            return
        self._require_ready()
        job.paused = False
        self._set_status(state=MachineState.RUNNING, progress=self._progress())
        self._emit(EventKind.RESUMED, program=job.program.name)
        self._pump()

    def _require_job(self) -> _Job:
        if self._job is None or self._job.cancelling:
            raise DriverError("no program is running")
        return self._job

    async def cancel(self) -> None:
        """Stop feeding, break a heating wait (M108), switch heaters and fan off, emit CANCELLED."""
        job = self._require_job()
        job.cancelling = True
        job.paused = True
        stop: list[_Waiter] = []
        if self.connected and self._halted is None:
            self._core.drop_unsent()
            # M108 unnumbered and at once: the firmware's emergency parser acts on it even
            # while M109/M190 block the command queue.
            self._core.write_unnumbered("M108")
            for command in ("M104 S0", "M140 S0", "M107"):
                waiter = _Waiter(self._new_future())
                self._core.submit(Cmd.of(command, _Tag(waiter=waiter)))
                stop.append(waiter)
            self._flush()
        for waiter in stop:
            with contextlib.suppress(DriverError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter.future), self.timeout_s)
        if self._job is job:
            self._end_job(EventKind.CANCELLED, "cancelled by the operator")

    async def emergency_stop(self) -> None:
        """Send M112 at once, unnumbered, ahead of everything; the printer needs a reset."""
        if self._link is None or not self._link.is_open:
            raise MachineOffline("the printer is not connected: use its own stop button")
        self._link.write(b"M112\n")
        reason = "emergency stop (M112): the printer is halted; reset it and reconnect"
        self._halt(reason)

    async def reset(self) -> str:
        """Recover after M112 or a firmware fault: close the port and connect again.

        Marlin leaves kill() (M112, thermal runaway) only through a board reset; M999 clears
        the milder "stopped" state only. Opening the port raises DTR, which resets the boards
        printers use, and the handshake starts a fresh session (M110 N0, M115).
        """
        if self._job is not None and self._halted is None:
            raise MachineBusy(f"program {self._job.program.name!r} is running: cancel it first")
        await self.close()
        await self.connect()
        return "the printer was reset and reconnected; it is not homed and its heaters are off"

    async def send(self, command: str) -> list[str]:
        """Send one command and return its reply lines up to and including the `ok`.

        While a program is loaded only M105, M114, M108 and M112 are accepted.
        """
        command = strip_comment(command)
        if not command:
            return []
        code = command_code(command)
        if code == "M112":
            await self.emergency_stop()
            return []
        self._require_ready()
        if code == "M110":
            raise DriverError("M110 is sent by the driver itself: it manages line numbers")
        if self._job is not None and code not in REALTIME_COMMANDS:
            raise MachineBusy(
                f"program {self._job.program.name!r} is running: only "
                f"{', '.join(sorted(REALTIME_COMMANDS))} can be sent now; pause is not enough, "
                "cancel the program first"
            )
        if code == "M108":
            self._core.write_unnumbered("M108")
            self._flush()
            return []
        async with self._send_lock:
            waiter = _Waiter(self._new_future())
            self._core.submit(Cmd.of(command, _Tag(waiter=waiter)))
            self._flush()
            # The core re-sends an unanswered line and fails the link when the printer has
            # been silent too long; the future is settled either way.
            return await asyncio.shield(waiter.future)

    def _new_future(self) -> asyncio.Future[list[str]]:
        return asyncio.get_running_loop().create_future()

    # -- the protocol core's I/O ----------------------------------------------------------

    def _feed(self) -> Cmd | None:
        """Hand the core the next program line, if the job wants one sent."""
        job = self._job
        if job is None or job.paused or job.next_index >= len(job.program.lines):
            return None
        index = job.next_index
        job.next_index += 1
        return Cmd.of(job.program.lines[index], _Tag(job_index=index))

    def _pump(self) -> None:
        if self._halted is not None or self._handshake_q is not None:
            return
        self._core.pump()
        self._flush()

    def _flush(self) -> None:
        """Carry out what the core decided: write, complete commands, fail, set the timer."""
        core = self._core
        writes = core.take_writes()
        link = self._link
        if writes and link is not None and link.is_open and self._halted is None:
            try:
                for data in writes:
                    if self._trace:
                        log.debug("marlin -> %s", data)
                    link.write(data)
            except MachineOffline as exc:
                self._on_link_lost(str(exc))
                return
        for cmd, text in core.take_done():
            self._completed(cmd, text)
        if core.failure is not None:
            failure = core.failure
            core.failure = None
            core.halt()
            self._link_failure(failure)
            return
        self._maybe_finish()
        self._schedule()

    def _schedule(self) -> None:
        deadline = self._core.deadline()
        if deadline is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return  # the armed timer fires first; it re-arms for the rest
        self._cancel_timer()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer_at = deadline
        self._timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        try:
            self._core.tick()
            self._flush()
        except Exception:  # a bug must not stop the timer chain; the ticker re-arms it
            log.exception("marlin: protocol timer failed")

    def _completed(self, cmd: Cmd, ok_text: str) -> None:
        tag = cmd.tag
        if not isinstance(tag, _Tag):
            return
        if tag.is_poll:
            self._poll_out = False
            self._last_poll = time.monotonic()
        job = self._job
        if tag.motion_end:
            if job is not None and job.motion_wait is cmd:
                job.motion_done = True
            return
        if job is not None and tag.job_index is not None:
            job.acked += 1
            job.last_acked = cmd.command
            now = time.monotonic()
            if now - self._last_publish >= 0.5:
                self._last_publish = now
                self._set_status(progress=self._progress())
        if tag.waiter is not None and not tag.waiter.future.done():
            tag.waiter.lines.append(ok_text)
            tag.waiter.future.set_result(list(tag.waiter.lines))

    def _maybe_finish(self) -> None:
        job = self._job
        if job is None or job.cancelling:
            return
        total = len(job.program.lines)
        if job.next_index < total or job.acked < total:
            return
        if self.wait_for_motion and not job.motion_done and self._halted is None:
            if job.motion_wait is None:
                # Every line is in the firmware; wait for its planner to run dry.
                job.acked_all_at = time.time()
                job.motion_wait = Cmd.of("M400", _Tag(motion_end=True))
                self._set_status(message=f"{job.program.name}: finishing the last moves")
                self._core.submit(job.motion_wait)
                self._flush()
            return
        self._end_job(EventKind.FINISHED, "finished")

    def _end_job(self, kind: EventKind, reason: str) -> None:
        job = self._job
        if job is None:
            return
        progress = self._progress()
        self._job = None
        data: dict[str, Any] = {
            "program": job.program.name,
            "reason": reason,
            "lines_acked": job.acked,
            "last_line": job.last_acked,
            "elapsed_s": round(time.time() - job.started_at, 3),
        }
        if kind is EventKind.FINISHED and job.acked_all_at is not None:
            # From the last line's ok to the end of the motion (the closing M400's ok).
            data["motion_wait_s"] = round(time.time() - job.acked_all_at, 3)
        if kind is EventKind.FINISHED or kind is EventKind.CANCELLED:
            state = MachineState.IDLE if self._halted is None else MachineState.ERROR
            self._set_status(state=state, message=reason, progress=progress)
        else:
            self._set_status(progress=progress)
        self._emit(kind, **data)

    # -- receiving ------------------------------------------------------------------------

    async def _read_loop(self, link: AsyncSerialLink) -> None:
        partial_seen = b""
        partial_since = 0.0
        try:
            while True:
                if self._loose_newlines:
                    wait = 0.005  # the peer leaves replies unterminated: look often
                else:
                    wait = self.partial_line_s if link.pending_partial() else 1.0
                try:
                    text = await link.readline(wait)
                except TimeoutError:
                    partial = link.pending_partial()
                    if not partial:
                        continue
                    now = time.monotonic()
                    if partial != partial_seen:
                        partial_seen, partial_since = partial, now
                    # A peer known to drop newlines ends a reply with a bare "ok" or "wait":
                    # take it at once. Anything else waits until the peer has been quiet.
                    whole = self._loose_newlines and _ENDS_WITH_TOKEN.search(partial)
                    if not whole and now - partial_since < self.partial_line_s:
                        continue
                    text = link.take_partial().decode("utf-8", errors="replace")
                    partial_seen = b""
                    self._note_loose_newlines(text)
                self._on_text(text)
        except MachineOffline as exc:
            self._on_link_lost(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave a job hanging silently
            log.exception("marlin reader failed")
            self._on_link_lost(f"internal error in the Marlin driver: {exc!r}")

    def _on_raw_line(self, raw: bytes) -> None:
        """A complete line from the link's reader callback (most replies come this way)."""
        try:
            self._on_text(raw.decode("utf-8", errors="replace"))
        except Exception as exc:  # a bug must not leave a job hanging silently
            log.exception("marlin reader failed")
            self._on_link_lost(f"internal error in the Marlin driver: {exc!r}")

    def _on_text(self, text: str) -> None:
        pieces = split_replies(text)
        if len(pieces) > 1:
            self._note_loose_newlines(text)
        for piece in pieces:
            if piece.strip():
                self._on_line(piece)

    def _note_loose_newlines(self, text: str) -> None:
        if not self._loose_newlines:
            self._loose_newlines = True
            log.info("marlin: the firmware ends replies without newlines (%r); coping", text)

    def _on_line(self, text: str) -> None:
        reply = parse_reply(text)
        if self._trace:
            log.debug("marlin <- %s", text)
        if reply.temperatures:
            self._update_temperatures(reply.temperatures)
        if reply.position:
            self._set_status(position=dict(reply.position))
        if self._handshake_q is not None:
            self._handshake_q.put_nowait(reply)
            return
        kind = reply.kind
        if kind is ReplyKind.ERROR and reply.error_class is ErrorClass.FATAL:
            self._emit(EventKind.LOG, line=reply.text)
            self._halt(f"firmware error: {reply.message}")
            return
        if kind is ReplyKind.START:
            self._on_firmware_restart()
            return
        if kind is ReplyKind.ACTION:
            self._on_action(reply.message)
        elif kind in (ReplyKind.ECHO, ReplyKind.POSITION, ReplyKind.OTHER):
            self._emit(EventKind.LOG, line=reply.text, **self._program_line_of(reply))
            self._collect(reply.text)
        if self._halted is not None:
            return
        self._core.on_reply(reply)
        self._flush()

    def _program_line_of(self, reply: Reply) -> dict[str, Any]:
        """Name the program line an `echo:Unknown command` answers (the oldest in flight:
        Marlin runs commands in order and echoes before its ok), for the host's policy."""
        if reply.kind is not ReplyKind.ECHO or not reply.message.startswith("Unknown command"):
            return {}
        oldest = self._core.oldest()
        if oldest is None or self._job is None:
            return {}
        tag = oldest.tag
        if not isinstance(tag, _Tag) or tag.job_index is None:
            return {}
        return {"line_number": tag.job_index + 1, "program_line": oldest.command}

    def _collect(self, text: str) -> None:
        oldest = self._core.oldest()
        if oldest is not None and isinstance(oldest.tag, _Tag) and oldest.tag.waiter is not None:
            oldest.tag.waiter.lines.append(text)

    def _update_temperatures(self, temps: Mapping[str, Temperature]) -> None:
        merged = dict(self._status.temperatures)
        merged.update(temps)
        self._set_status(temperatures=merged)

    # -- actions, faults, link loss -------------------------------------------------------

    def _on_action(self, message: str) -> None:
        action = message.split(" ", 1)[0] if message else ""
        self._emit(EventKind.ACTION, action=action, line=message)
        job = self._job
        if job is None or job.cancelling:
            return
        call: Callable[[], Any] | None = {
            "pause": self.pause,
            "resume": self.resume,
            "cancel": self.cancel,
        }.get(action)
        if call is not None:
            task = asyncio.get_running_loop().create_task(call())
            task.add_done_callback(_log_task_error)

    def _on_firmware_restart(self) -> None:
        self._emit(EventKind.LOG, line="start")
        if self._job is not None or self._core.inflight():
            self._halt("the printer restarted (it printed 'start'); reconnect to continue")

    def _halt(self, reason: str) -> None:
        if self._halted is not None:
            return
        self._halted = reason
        log.warning("marlin halted: %s", reason)
        self._fail_waiters(FirmwareError(reason))
        self._core.halt()
        if self._job is not None:
            self._end_job(EventKind.FAILED, reason)
        self._set_status(state=MachineState.ERROR, message=reason)

    def _link_failure(self, reason: str) -> None:
        """Stop on a broken link: report, close the port."""
        self._on_link_lost(reason)
        if self._link is not None:
            self._link.close(reason)

    def _on_link_lost(self, reason: str) -> None:
        self._core.halt()
        if self._status.state is MachineState.OFFLINE and self._job is None:
            return
        log.warning("marlin link lost: %s", reason)
        last = self._job.last_acked if self._job is not None else None
        if self._job is not None:
            self._end_job(EventKind.FAILED, reason)
        self._fail_waiters(MachineOffline(reason))
        self._set_status(state=MachineState.OFFLINE, message=reason)
        self._emit(EventKind.DISCONNECTED, reason=reason, last_line=last)
        if self._link is not None:
            self._link.close(reason)

    def _fail_waiters(self, exc: DriverError) -> None:
        cmds = self._core.inflight() + self._core.drop_unsent()
        for cmd in cmds:
            tag = cmd.tag
            if isinstance(tag, _Tag) and tag.waiter is not None and not tag.waiter.future.done():
                tag.waiter.future.set_exception(exc)
                tag.waiter.future.exception()  # mark retrieved: the caller may be gone

    # -- timers ---------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        """The watchdog: runs `_tick` every `tick_interval_s`; an exception never stops it."""
        while True:
            await asyncio.sleep(self.tick_interval_s)
            try:
                self._tick(time.monotonic())
            except Exception:
                log.exception("marlin ticker: a tick failed; the watchdog carries on")

    def _tick(self, now: float) -> None:
        link = self._link
        if link is None or not link.is_open or self._halted is not None:
            return
        core = self._core
        core.tick()  # backstop for the timer
        self._flush()
        if self._halted is not None or self._handshake_q is not None:
            return
        autoreport = self.capabilities.get("AUTOREPORT_TEMP", False)
        interval = self.poll_interval_job_s if self._job is not None else self.poll_interval_s
        if (
            not autoreport
            and not self._poll_out
            and not core.long_inflight()
            and not core.settling
            and now - self._last_poll > interval
        ):
            self._last_poll = now
            self._poll_out = True
            core.submit(Cmd.of("M105", _Tag(is_poll=True)))
            self._flush()


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("marlin action failed: %s", task.exception())
