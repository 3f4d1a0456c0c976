"""The Marlin protocol core without a port: every resend case, against a fake clock.

Replies are written as Marlin 2.1 (`GCodeQueue::gcode_line_error`, `flush_and_request_resend`)
and OctoPrint's VirtualPrinter 1.11 word them; the cases follow what a host meets on a real
link (OctoPrint's comm.py handles the same ones with one line in flight).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from drivers.marlin import MarlinDriver
from drivers.marlin_protocol import (
    Cmd,
    MarlinProtocol,
    format_line,
    parse_motion_limits,
    parse_reply,
    split_replies,
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Host:
    """A protocol core with a fake clock and a program to feed it."""

    def __init__(self, program: list[str] | None = None, first: int = 10, **kw: Any) -> None:
        self.clock = Clock()
        kw.setdefault("window", 4)
        self.core = MarlinProtocol(self.clock, **kw)
        self.core.start(first)
        self.program = list(program or [f"G1 X{i}" for i in range(200)])
        self.fed = 0
        self.core.feed = self._feed
        self.done: list[str] = []

    def _feed(self) -> Cmd | None:
        if self.fed >= len(self.program):
            return None
        self.fed += 1
        return Cmd.of(self.program[self.fed - 1], tag=self.fed - 1)

    def writes(self) -> list[str]:
        """What the core wrote since the last call, without newlines."""
        self.core.pump()
        return [w.decode().strip("\n") for w in self.core.take_writes()]

    def reply(self, *lines: str) -> list[str]:
        """Feed reply lines; return what was written in answer."""
        for line in lines:
            self.core.on_reply(parse_reply(line))
        self._collect()
        return self.writes()

    def burst(self, *lines: str) -> list[str]:
        """Feed a fault's replies, then let the firmware be quiet; return every write."""
        return self.reply(*lines) + self.settle()

    def settle(self) -> list[str]:
        """Let the firmware be quiet for longer than the settle time; return the writes."""
        self.clock.advance(self.core.settle_s + 0.001)
        self.core.tick()
        self._collect()
        return self.writes()

    def wait(self, seconds: float) -> list[str]:
        self.clock.advance(seconds)
        self.core.tick()
        self._collect()
        return self.writes()

    def _collect(self) -> None:
        self.done += [cmd.command for cmd, _ in self.core.take_done()]


def n(number: int, command: str) -> str:
    return format_line(number, command)


def test_streams_within_the_window_numbered_and_checksummed() -> None:
    host = Host()
    assert host.writes() == [n(10, "G1 X0"), n(11, "G1 X1"), n(12, "G1 X2"), n(13, "G1 X3")]
    assert host.reply("ok") == [n(14, "G1 X4")]
    assert host.done == ["G1 X0"]
    assert host.reply("ok", "ok") == [n(15, "G1 X5"), n(16, "G1 X6")]
    assert host.done == ["G1 X0", "G1 X1", "G1 X2"]


def test_lines_beyond_the_slots_must_fit_the_receive_buffer() -> None:
    host = Host(["G1 X" + "1" * 40] * 20, window=8, buffer_slots=2, rx_buffer=128)
    # 2 lines in the slots, then 2 of 57 bytes in the 128-byte buffer; a third would spill
    assert len(host.writes()) == 4


def marlin_burst(last: int, in_flight: int) -> list[str]:
    """Marlin's replies to a damaged line after `last` with `in_flight` lines behind it."""
    lines = [f"Error:checksum mismatch, Last Line: {last}", f"Resend: {last + 1}", "ok"]
    for _ in range(in_flight):
        lines += [
            f"Error:Line Number is not Last Line Number+1, Last Line: {last}",
            f"Resend: {last + 1}",
            "ok",
        ]
    return lines


def test_a_burst_of_duplicate_requests_is_one_resend() -> None:
    host = Host()
    host.writes()  # N10..N13
    # N10 damaged: one request for it, and one for each of N11..N13 behind it
    replies = marlin_burst(9, 3)
    assert host.reply(*replies[:-1]) == []  # nothing goes out while replies come
    # the last line in flight has answered: resend at once, once, and alone
    assert host.reply(replies[-1]) == [n(10, "G1 X0")]
    stats = host.core.stats
    assert (stats["resends"], stats["stale_resends"], stats["swallowed_oks"]) == (1, 7, 4)
    assert host.core.window == 1
    assert host.reply("ok") == [n(11, "G1 X1")]
    assert host.reply("ok") == [n(12, "G1 X2")]
    assert host.done == ["G1 X0", "G1 X1"]
    assert stats["anchors"] == 0  # Marlin names the line it saw last: its counter is trusted


def test_the_window_widens_again_after_clean_lines() -> None:
    host = Host(clean_lines=3)
    host.writes()
    host.reply(*marlin_burst(9, 3))
    host.settle()
    assert host.reply("ok") == [n(11, "G1 X1")]
    assert host.reply("ok") == [n(12, "G1 X2")]
    # the third clean line: four in flight again
    assert host.reply("ok") == [n(13, "G1 X3"), n(14, "G1 X4"), n(15, "G1 X5"), n(16, "G1 X6")]


def test_deferred_oks_of_queued_lines_are_not_taken_for_the_resent_line() -> None:
    """Marlin acknowledges a queued line when it runs, after an error about a later one."""
    host = Host()
    host.writes()  # N10..N13; N10 and N11 are queued, their oks come later
    host.reply(*marlin_burst(11, 1))  # N12 damaged, N13 behind it
    assert host.settle() == [n(12, "G1 X2")]
    assert host.done == ["G1 X0", "G1 X1"]  # the firmware has them
    assert host.reply("ok", "ok") == []  # the oks of N10 and N11 as they run
    assert host.done == ["G1 X0", "G1 X1"]
    assert host.reply("ok") == [n(13, "G1 X3")]  # now N12's
    assert host.done == ["G1 X0", "G1 X1", "G1 X2"]


def test_a_late_duplicate_after_an_early_resend_costs_one_round() -> None:
    host = Host(window=2)
    assert host.writes() == [n(10, "G1 X0"), n(11, "G1 X1")]
    # both lines in flight answered: resolved without waiting for quiet
    assert host.reply(*marlin_burst(9, 1)) == [n(10, "G1 X0")]
    # a late duplicate request: N10 is sent again; its earlier copy's ok follows
    assert host.reply("Resend: 10", "ok") == [n(10, "G1 X0")]
    assert host.reply("ok") == [n(11, "G1 X1")]
    # the third copy of N10 arrives after the second ran: "I have it, send 11"
    assert host.burst(
        "Error:Line Number is not Last Line Number+1, Last Line: 10", "Resend: 11", "ok"
    ) == [n(11, "G1 X1")]
    assert host.reply("ok") == [n(12, "G1 X2")]
    assert host.done == ["G1 X0", "G1 X1"]


def test_an_unanswered_line_is_sent_again_with_its_number() -> None:
    host = Host(line_timeout_s=3.0)
    host.writes()
    host.reply("ok", "ok", "ok")  # N10..N12 done; N13 in flight, then N14..N16
    assert host.writes() == []
    assert host.wait(2.9) == []
    # N13's ok was lost: after 3 s the oldest unanswered line goes again, alone
    assert host.wait(0.2) == [n(13, "G1 X3")]
    assert host.core.window == 1
    assert host.core.failure is None
    # The firmware had it (and N14..N16): it asks for N17; nothing runs twice
    host.reply("ok", "ok", "ok")  # N14..N16 as they run, taken for N13..N15
    assert host.burst(
        "Error:Line Number is not Last Line Number+1, Last Line: 16", "Resend: 17", "ok"
    ) == [n(17, "G1 X7")]
    assert host.done == [f"G1 X{i}" for i in range(7)]


def test_timeouts_never_fail_the_job_while_the_printer_talks() -> None:
    host = Host(["G1 X1"], line_timeout_s=3.0, dead_after_s=60.0)
    assert host.writes() == [n(10, "G1 X1")]
    for _ in range(30):  # 90 s of temperature reports and no ok
        host.reply("T:21.30 /0.00 B:21.10 /0.00 @:0 B@:0")
        assert host.wait(3.0) == [n(10, "G1 X1")]
    assert host.core.failure is None
    assert host.core.stats["timeouts"] == 30


def test_total_silence_is_a_dead_link() -> None:
    host = Host(["G1 X1"], line_timeout_s=3.0, dead_after_s=10.0)
    host.writes()
    for _ in range(3):
        host.wait(3.0)
    assert host.core.failure is None
    host.wait(3.0)
    assert host.core.failure is not None
    assert "no reply from the printer for 12 s" in host.core.failure


def test_an_idle_wait_sends_a_lost_line_again_early() -> None:
    host = Host(["G1 X1", "G1 X2"], window=1)
    host.writes()
    assert host.reply("wait") == []  # just written: the wait may predate it
    host.clock.advance(1.0)
    assert host.reply("wait") == [n(10, "G1 X1")]


def test_long_commands_are_a_barrier_and_busy_keeps_them_alive() -> None:
    host = Host(["G28", "G1 X1", "G1 X2"], line_timeout_s=3.0, long_timeout_s=60.0)
    assert host.writes() == [n(10, "G28")]  # nothing behind it until its ok
    for _ in range(10):  # 20 s of homing
        assert host.reply("echo:busy: processing") == []
        assert host.wait(2.0) == []
    assert host.reply("ok") == [n(11, "G1 X1"), n(12, "G1 X2")]
    assert host.core.stats["timeouts"] == 0


def test_heating_reports_keep_m109_alive_but_not_a_move() -> None:
    host = Host(["M109 S210", "G1 X1"], long_timeout_s=10.0)
    assert host.writes() == [n(10, "M109 S210")]
    for _ in range(5):
        host.reply(" T:150.23 /210.00 B:60.00 /60.00 @:127 B@:0 W:?")
        assert host.wait(8.0) == []
    assert host.reply("ok") == [n(11, "G1 X1")]
    host.reply(" T:210.00 /210.00 B:60.00 /60.00 @:127 B@:0")  # an auto-report
    assert host.wait(3.1) == [n(11, "G1 X1")]  # the move's silence still times out


def test_virtual_printers_resend_with_timeout_does_not_lose_the_line() -> None:
    """It asks for 105, swallows the next line and then claims to have 105."""
    host = Host(first=105)
    host.writes()  # N105..N108
    host.reply("Error: Missing checksum", "Resend:105", "ok")  # N106 is swallowed
    host.reply("Error: expected line 106 got 107", "Resend:106", "ok")
    host.reply("Error: expected line 106 got 108", "Resend:106", "ok")
    # An anchor, then the first line again under a new number
    assert host.settle() == [n(105, "M110 N105")]
    assert host.core.distrust
    assert host.reply("ok") == [n(106, "G1 X0")]
    assert host.reply("ok") == [n(107, "G1 X1")]
    assert host.done == ["G1 X0"]
    assert host.core.stats["lies"] == 1


def test_a_line_sent_again_after_a_timeout_that_the_firmware_has() -> None:
    """One line in flight: rejected, resent, the answer lost, then "Resend: n+1".

    Marlin means "I have it" (the resent line ran, its ok was lost): the host believes it.
    """
    host = Host(first=105, window=1)
    host.writes()
    assert host.burst("Error:checksum mismatch, Last Line: 104", "Resend: 105", "ok") == [
        n(105, "G1 X0")
    ]
    assert host.wait(3.0) == [n(105, "G1 X0")]  # no answer: again
    assert host.burst(
        "Error:Line Number is not Last Line Number+1, Last Line: 105", "Resend: 106", "ok"
    ) == [n(106, "G1 X1")]
    assert host.done == ["G1 X0"]


def test_resend_with_timeout_with_one_line_in_flight() -> None:
    """VirtualPrinter swallows the line after its request: here the anchor, sent again."""
    host = Host(first=105, window=1)
    host.writes()
    assert host.burst("Error: Missing checksum", "Resend:105", "ok") == [
        n(105, "M110 N105")
    ]  # swallowed
    assert host.wait(3.0) == [n(105, "M110 N105")]  # no answer: again, never a failure
    assert host.reply("ok") == [n(106, "G1 X0")]
    assert host.reply("ok") == [n(107, "G1 X1")]
    assert host.done == ["G1 X0"]


def test_a_drifting_counter_asks_past_the_damaged_line_and_is_anchored() -> None:
    """VirtualPrinter's checksum error asks for current_line + 1, which counts rejected lines."""
    host = Host(first=50)
    host.writes()  # N50..N53
    host.reply("Error: Checksum mismatch", "Resend:52", "ok")  # N50 damaged; it skips 2
    assert host.burst("Error: expected line 52 got 51", "Resend:52", "ok") == [
        n(50, "M110 N50")
    ]  # from the line it did not run
    assert host.done == []
    assert host.reply("ok") == [n(51, "G1 X0")]


def test_a_firmware_that_names_no_line_is_anchored_after_every_fault() -> None:
    host = Host(first=20)
    host.writes()
    assert host.burst("Error: Missing checksum", "Resend:20", "ok") == [
        n(20, "M110 N20")
    ]  # resets its counter: no drift later


def test_a_late_request_while_the_anchor_is_out_anchors_again() -> None:
    host = Host(first=20)
    host.writes()
    assert host.burst("Error: Missing checksum", "Resend:20", "ok") == [n(20, "M110 N20")]
    host.reply("Error: expected line 20 got 23", "Resend:20", "ok")  # from before the anchor
    host.reply("ok")  # the anchor's
    assert host.settle() == [n(21, "M110 N21")]
    assert host.reply("ok") == [n(22, "G1 X0")]


def test_a_request_for_a_line_never_sent_resumes_from_the_hosts_count() -> None:
    host = Host(first=30)
    host.writes()  # N30..N33
    host.reply("ok")
    assert host.burst("Error:checksum mismatch, Last Line: 39", "Resend: 40", "ok") == [
        n(31, "M110 N31")
    ]
    assert host.reply("ok") == [n(32, "G1 X1")]


def test_a_resend_loop_on_one_line_is_a_broken_link() -> None:
    host = Host(max_resends=10)
    host.writes()
    for _ in range(9):
        assert host.burst("Error:checksum mismatch, Last Line: 9", "Resend: 10", "ok") == [
            n(10, "G1 X0")
        ]
    host.reply("Error:checksum mismatch, Last Line: 9", "Resend: 10", "ok")
    host.settle()
    assert host.core.failure is not None
    assert "asked for line 10 ('G1 X0') 10 times in a row" in host.core.failure


def test_a_line_no_longer_in_the_history_is_a_failure() -> None:
    host = Host(history=64)
    for _ in range(100):
        host.writes()
        host.reply("ok")
    host.reply("Error:checksum mismatch, Last Line: 10", "Resend: 11", "ok")
    host.settle()
    assert host.core.failure is not None
    assert "no longer in the resend history" in host.core.failure


def test_the_ok_of_a_cut_lines_tail_answers_no_line() -> None:
    host = Host()
    host.writes()
    host.reply('echo:Unknown command: "2.5*88"', "ok")  # a tail cut by the drain
    assert host.done == []
    assert host.reply("ok") == [n(14, "G1 X4")]
    assert host.done == ["G1 X0"]


def test_advanced_ok_reports_slots_and_the_idle_planner() -> None:
    host = Host(["G1 X1"] * 20, window=2)
    assert len(host.writes()) == 2
    host.reply("ok N10 P15 B7")
    assert host.core.learned_slots == 8
    assert len(host.core.inflight()) == 8  # the window follows the firmware's slots
    assert host.core.idle_planner_free is None  # two lines were in flight: not idle


def test_unnumbered_m108_counts_its_ok() -> None:
    host = Host(["M109 S210", "G1 X1"])
    host.writes()
    host.core.write_unnumbered("M108")
    assert host.writes() == ["M108"]
    host.reply("ok", "ok")  # M109 ends early, then M108's ok
    assert host.done == ["M109 S210", "M108"]


def test_halt_sends_nothing_more() -> None:
    host = Host()
    host.writes()
    host.core.halt()
    assert host.reply("ok") == []


# -- M503 and glued replies ----------------------------------------------------------------

MARLIN_M503 = [
    "echo:; Max feedrates (units/s):",
    "echo:  M203 X300.00 Y300.00 Z5.00 E25.00",
    "echo:; Max Acceleration (units/s2):",
    "echo:  M201 X3000.00 Y3000.00 Z100.00 E10000.00",
    "echo:; Acceleration (units/s2) (P<print-accel> R<retract-accel> T<travel-accel>):",
    "echo:  M204 P3000.00 R3000.00 T3000.00",
    "echo:; Advanced (B<min_segment_time_us> S<min_feedrate> T<min_travel_feedrate> J<junc_dev>):",
    "echo:  M205 B20000.00 S0.00 T0.00 J0.013",
    "echo:; Linear Advance:",
    "echo:  M900 K0.22",
    "ok",
]


def test_m503_with_junction_deviation() -> None:
    limits = parse_motion_limits(MARLIN_M503)
    assert limits == {
        "max_feedrate": (300.0, 300.0, 5.0, 25.0),
        "max_acceleration": (3000.0, 3000.0, 100.0, 10000.0),
        "print_acceleration": 3000.0,
        "retract_acceleration": 3000.0,
        "travel_acceleration": 3000.0,
        "junction_deviation": 0.013,
        "min_extrude_feedrate": 0.0,
        "min_travel_feedrate": 0.0,
        "min_segment_time_us": 20000.0,
        "linear_advance_k": 0.22,
    }


def test_m503_with_classic_jerk_and_the_planner_size() -> None:
    lines = ["echo:  M205 B20000.00 S0.00 T0.00 X8.00 Y8.00 Z0.40 E4.50", "echo:  M204 S1250"]
    limits = parse_motion_limits(lines, idle_planner_free=15)
    assert limits["max_jerk"] == (8.0, 8.0, 0.4, 4.5)
    assert limits["junction_deviation"] is None
    assert limits["print_acceleration"] == limits["travel_acceleration"] == 1250.0
    assert limits["planner_blocks"] == 16  # Marlin holds one block less than its buffer
    m115 = ["FIRMWARE_NAME:Marlin 2.1 BLOCK_BUFFER_SIZE:32 EXTRUDER_COUNT:1"]
    assert parse_motion_limits(lines, m115, idle_planner_free=15)["planner_blocks"] == 32


def test_glued_echo_lines_and_a_trailing_ok_are_split() -> None:
    glued = "echo:; Steps per unit:echo: M92 X80.0 Y80.0echo: M301 P27.08 I2.51 D73.09ok"
    assert split_replies(glued) == [
        "echo:; Steps per unit:",
        "echo: M92 X80.0 Y80.0",
        "echo: M301 P27.08 I2.51 D73.09",
        "ok",
    ]
    assert split_replies("echo:busy: processing") == ["echo:busy: processing"]


# -- the watchdog ---------------------------------------------------------------------------


async def test_the_watchdog_survives_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    driver = MarlinDriver({"port": "/dev/null", "tick_interval_s": 0.01})
    calls: list[float] = []
    second = asyncio.Event()

    def tick(now: float) -> None:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("injected")
        second.set()

    driver._tick = tick  # type: ignore[method-assign]
    task = asyncio.create_task(driver._tick_loop())
    try:
        with caplog.at_level(logging.ERROR, logger="drivers.marlin"):
            await asyncio.wait_for(second.wait(), 10)
        assert len(calls) >= 2
        assert not task.done()
        assert "a tick failed" in caplog.text
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def stream_with(
    host: Host, lines: int, latency: float, service: Callable[[int], float]
) -> list[int]:
    """Run a firmware model against the core; return the lines in flight at each ok.

    Each ok comes `latency` after its line was written, and `service(in_flight)` after the
    firmware's previous ok (its own processing, which may slow down with more lines queued).
    """
    written: list[float] = []
    in_flight_seen: list[int] = []
    last_ok = host.clock.now
    for _ in range(lines):
        written += [host.clock.now] * len(host.writes())
        n = len(host.core.inflight())
        if n == 0:
            break
        at = max(last_ok + service(n), written.pop(0) + latency)
        host.clock.now = max(host.clock.now, at)
        last_ok = host.clock.now
        in_flight_seen.append(n)
        host.core.on_reply(parse_reply("ok"))
        host._collect()
    return in_flight_seen


def test_the_window_tuner_keeps_the_full_window_where_the_link_has_latency() -> None:
    # 2 ms of latency, 0.1 ms of processing: 4 lines in flight are 4x as fast as one.
    host = Host([f"G1 X{i % 100}" for i in range(3000)], autotune=True)
    seen = stream_with(host, 2000, 0.002, lambda n: 0.0001)
    tuner = host.core._tuner
    assert tuner is not None
    assert tuner.holding
    assert tuner.chosen is None  # the full window
    assert seen[-100:] == [4] * 100


def test_the_window_tuner_keeps_the_full_window_on_a_motion_bound_printer() -> None:
    # The printer takes 5 ms a line whatever the host does: every window is as fast, so the
    # full one stays (it keeps the planner fed).
    host = Host([f"G1 X{i % 100}" for i in range(3000)], autotune=True)
    seen = stream_with(host, 2000, 0.0002, lambda n: 0.005)
    assert host.core._tuner is not None
    assert host.core._tuner.holding
    assert host.core._tuner.chosen is None
    assert seen[-100:] == [4] * 100


def test_the_window_tuner_narrows_where_more_lines_in_flight_slow_the_firmware() -> None:
    # A firmware like VirtualPrinter on a bare pty: no latency to hide, and each extra line
    # queued slows its processing (its threads contend for one lock).
    host = Host([f"G1 X{i % 100}" for i in range(3000)], autotune=True)
    seen = stream_with(host, 2000, 0.0002, lambda n: 0.0003 * (1 + 0.3 * (n - 1)))
    tuner = host.core._tuner
    assert tuner is not None
    assert tuner.holding
    assert tuner.chosen == 1
    assert seen[-100:] == [1] * 100


def test_the_window_tuner_measures_again_after_holding() -> None:
    host = Host([f"G1 X{i % 100}" for i in range(9000)], autotune=True)
    tuner = host.core._tuner
    assert tuner is not None
    tuner.hold_lines = 500
    stream_with(host, 1500, 0.0002, lambda n: 0.0003 * (1 + 0.3 * (n - 1)))
    assert tuner.choices == [1]
    # The link changes (a latency appears): the next measurement widens the window again.
    stream_with(host, 2500, 0.002, lambda n: 0.0001)
    assert tuner.choices[:2] == [1, None]
    assert host.core.window_choices[:2] == [1, 4]
