"""Pure unit tests: status report parser, code tables, character-counting bookkeeping."""

from __future__ import annotations

import random

import pytest

from drivers.base import MachineState, ProtocolError
from drivers.grbl import (
    CharCounter,
    GrblDriver,
    _override_bytes,
    _Pending,
    compact,
    dwell_seconds,
    is_eeprom_command,
    parse_status_report,
)
from drivers.grbl_codes import (
    ALARM_CODES,
    CRITICAL_ALARMS,
    ERROR_CODES,
    alarm_meaning,
    describe_alarm,
    describe_error,
    error_meaning,
)

# -- status reports ---------------------------------------------------------------------


def test_parse_full_report() -> None:
    rep = parse_status_report(
        "<Run|MPos:1.000,2.000,0.000|Bf:15,128|Ln:42|FS:500,8000|WCO:0.500,0.000,-1.000"
        "|Ov:110,100,90|A:SF>"
    )
    assert rep.state == "Run"
    assert rep.base_state == "Run"
    assert rep.mpos == (1.0, 2.0, 0.0)
    assert rep.wpos is None
    assert rep.wco == (0.5, 0.0, -1.0)
    assert (rep.feed, rep.spindle) == (500.0, 8000.0)
    assert (rep.planner_free, rep.rx_free) == (15, 128)
    assert rep.line == 42
    assert rep.overrides == (110, 100, 90)
    assert rep.accessories == "SF"


def test_parse_substates_wpos_and_feed_only() -> None:
    rep = parse_status_report("<Hold:0|WPos:-2.500,0.000,11.000|F:300|Pn:XZ>")
    assert rep.state == "Hold:0"
    assert rep.base_state == "Hold"
    assert rep.wpos == (-2.5, 0.0, 11.0)
    assert rep.feed == 300.0
    assert rep.spindle is None
    assert rep.pins == "XZ"
    assert parse_status_report("<Door:1|MPos:0,0,0>").base_state == "Door"
    for state in ("Idle", "Jog", "Alarm", "Check", "Home", "Sleep"):
        assert parse_status_report(f"<{state}|MPos:0.000,0.000,0.000>").state == state


def test_parse_four_axes_and_unknown_fields() -> None:
    rep = parse_status_report("<Idle|MPos:1,2,3,4|Xyz:whatever|FS:0,0>")
    assert rep.mpos == (1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize(
    "line",
    ["Idle|MPos:0,0,0", "<Bogus|MPos:0,0,0>", "<Idle|MPos:a,b,c>", "<Idle|Bf:15>", "ok"],
)
def test_parse_rejects_garbage(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_status_report(line)


def test_wco_is_cached_between_reports() -> None:
    driver = GrblDriver({"port": "/dev/null"})
    driver._phase = "online"
    driver._on_report(
        parse_status_report("<Idle|MPos:10.000,5.000,0.000|FS:0,0|WCO:2.000,1.000,-3.000>"),
        "",
    )
    driver._on_report(parse_status_report("<Run|MPos:12.000,5.000,0.000|FS:300,0>"), "")
    status = driver._status
    assert status.machine_position == {"X": 12.0, "Y": 5.0, "Z": 0.0}
    assert status.position == {"X": 10.0, "Y": 4.0, "Z": 3.0}
    assert status.extra["grbl_state"] == "Run"
    assert status.feed_mm_min == 300.0
    # A WPos report gives the machine position by adding the cached WCO back.
    driver._on_report(parse_status_report("<Idle|WPos:1.000,1.000,1.000|FS:0,0>"), "")
    assert driver._status.machine_position == {"X": 3.0, "Y": 2.0, "Z": -2.0}


def test_alarm_state_reports_locked() -> None:
    driver = GrblDriver({"port": "/dev/null"})
    driver._phase = "online"
    driver._on_message("'$H'|'$X' to unlock")
    driver._on_report(parse_status_report("<Alarm|MPos:0,0,0|FS:0,0>"), "")
    assert driver._status.state is MachineState.ERROR
    assert driver._status.message == "locked: home ($H) or unlock ($X)"
    driver._on_alarm(1)
    assert "ALARM:1" in driver._status.message
    assert "Hard limit" in driver._status.message


# -- code tables ------------------------------------------------------------------------


def test_error_table_is_complete() -> None:
    assert set(ERROR_CODES) == set(range(1, 39)) - {18, 19}
    assert error_meaning(9).startswith("G-code commands are locked out during alarm")
    assert error_meaning(20) == "Unsupported or invalid g-code command found in block."
    assert error_meaning(22) == "Feed rate has not yet been set or is undefined."
    assert "unknown" in error_meaning(99)
    assert describe_error(22) == "error:22 (Feed rate has not yet been set or is undefined.)"


def test_alarm_table_is_complete() -> None:
    assert set(ALARM_CODES) == set(range(1, 11))
    assert alarm_meaning(1).startswith("Hard limit has been triggered")
    assert alarm_meaning(3).startswith("Reset while in motion")
    assert all(alarm_meaning(c).startswith("Homing fail") for c in (6, 7, 8, 9, 10))
    assert {1, 2} == CRITICAL_ALARMS
    assert describe_alarm(2).startswith("ALARM:2 (Soft limit alarm.")


# -- line classification ----------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    ["$100=250", "$N0=G54", "$RST=*", "$I=shop mill", "G10 L2 P1 X0 Y0", "G10 P1 L20 X0",
     "g10l20p1x0", "G28.1", "G30.1", "G90 G28.1"],
)  # fmt: skip
def test_eeprom_commands(line: str) -> None:
    assert is_eeprom_command(line)


@pytest.mark.parametrize(
    "line", ["$H", "$X", "$$", "$N", "$G", "$C", "G10", "G28", "G30 X1", "G1 X10 L2", "G100 L2"]
)
def test_not_eeprom_commands(line: str) -> None:
    assert not is_eeprom_command(line)


def test_compact_and_dwell() -> None:
    assert compact(" g1 x1  y2 ") == "G1X1Y2"
    assert dwell_seconds("G4 P2.5") == 2.5
    assert dwell_seconds("G04P1") == 1.0
    assert dwell_seconds("G1 X1 F100") == 0.0


def test_override_bytes() -> None:
    assert _override_bytes(0, b"R", b"T", b"t", b"O", b"o") == b"R"
    assert _override_bytes(23, b"R", b"T", b"t", b"O", b"o") == b"TTOOO"
    assert _override_bytes(-11, b"R", b"T", b"t", b"O", b"o") == b"to"


# -- character counting -----------------------------------------------------------------


def _line(text: str) -> _Pending:
    return _Pending(text=text, nbytes=len(text) + 1)


def test_char_counter_fills_to_127_and_frees_on_reply() -> None:
    cc = CharCounter()
    assert cc.capacity == 127
    sent = 0
    while cc.fits(20):
        cc.push(_line("G1 X10.000 Y20.0000"))  # 19 chars + newline
        sent += 1
    assert sent == 6
    assert cc.used == 120
    assert not cc.fits(8)
    assert cc.fits(7)
    head = cc.pop()
    assert head is not None
    assert head.text == "G1 X10.000 Y20.0000"
    assert cc.used == 100
    assert cc.fits(20)
    assert len(cc.clear()) == 5
    assert cc.used == 0
    assert cc.pop() is None


def test_char_counter_rejects_a_line_that_can_never_fit() -> None:
    with pytest.raises(ValueError, match="never fit"):
        CharCounter().push(_line("X" * 127))


def test_char_counter_random_stream_never_exceeds_capacity() -> None:
    rng = random.Random(7)
    cc = CharCounter()
    lines = [f"G1 X{rng.uniform(0, 100):.3f}" * rng.randint(1, 6) for _ in range(2000)]
    answered: list[str] = []
    for text in lines:
        while not cc.fits(len(text) + 1):
            p = cc.pop()
            assert p is not None
            answered.append(p.text)
        cc.push(_line(text))
        assert cc.used <= 127
        if rng.random() < 0.3:
            p = cc.pop()
            assert p is not None
            answered.append(p.text)
    answered += [p.text for p in cc.clear()]
    assert answered == lines  # replies free lines strictly in order
    assert cc.max_used <= 127
