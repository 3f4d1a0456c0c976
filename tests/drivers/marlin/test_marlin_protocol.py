"""Pure unit tests: Marlin line format, checksums and reply parsing."""

from __future__ import annotations

import pytest

from drivers.base import Temperature
from drivers.marlin import (
    ErrorClass,
    ReplyKind,
    checksum,
    command_code,
    format_line,
    parse_reply,
    split_replies,
)


def test_checksum_of_the_documented_example() -> None:
    assert checksum("N0 M110 N0") == 125
    assert format_line(0, "M110 N0") == "N0 M110 N0*125"


def test_format_line_xors_every_byte() -> None:
    body = "N42 G1 X10.5 Y-3 E0.25"
    expected = 0
    for byte in body.encode():
        expected ^= byte
    assert format_line(42, "G1 X10.5 Y-3 E0.25") == f"{body}*{expected}"


@pytest.mark.parametrize(
    ("command", "code"),
    [("G1 X1", "G1"), ("g28", "G28"), ("M104.1 S0", "M104"), ("M0109 S200", "M109"), ("T1", "T1")],
)
def test_command_code(command: str, code: str) -> None:
    assert command_code(command) == code


@pytest.mark.parametrize(
    ("line", "number", "planner", "slots"),
    [
        ("ok", None, None, None),
        ("ok ", None, None, None),
        ("ok N12 P15 B3", 12, 15, 3),
        ("ok P15 B0", None, 15, 0),
    ],
)
def test_ok_variants(line: str, number: int | None, planner: int | None, slots: int | None) -> None:
    reply = parse_reply(line)
    assert reply.kind is ReplyKind.OK
    assert (reply.number, reply.planner_free, reply.slots_free) == (number, planner, slots)


def test_ok_with_temperatures() -> None:
    reply = parse_reply("ok T:210.0 /210.0 B:60.0 /60.0 @:127 B@:0")
    assert reply.kind is ReplyKind.OK
    assert reply.temperatures == {
        "T": Temperature(210.0, 210.0),
        "B": Temperature(60.0, 60.0),
    }


def test_autoreport_and_multi_tool_temperatures() -> None:
    reply = parse_reply(" T:21.30 /0.00 B:21.10 /0.00 T0:21.30 /0.00 T1:150.5 /200.0 @:0 B@:0")
    assert reply.kind is ReplyKind.TEMPERATURE
    assert reply.temperatures["T1"] == Temperature(150.5, 200.0)
    assert reply.temperatures["B"] == Temperature(21.1, 0.0)
    # VirtualPrinter writes "T:21.30/ 0.00"; heating lines end with " W:?"
    assert parse_reply("T:21.30/ 0.00 B:21.30/ 0.00 @:64").temperatures["T"] == Temperature(
        21.3, 0.0
    )
    assert parse_reply(" T:150.23 /210.00 B:60.00 /60.00 @:127 B@:0 W:?").kind is (
        ReplyKind.TEMPERATURE
    )


def test_position_report() -> None:
    reply = parse_reply("X:10.00 Y:20.00 Z:0.30 E:1.50 Count X:800 Y:1600 Z:120")
    assert reply.kind is ReplyKind.POSITION
    assert reply.position == {"X": 10.0, "Y": 20.0, "Z": 0.3, "E": 1.5}
    # VirtualPrinter puts the ok first; its "B:" counts are not a bed temperature
    ok = parse_reply("ok X:1.0 Y:2.0 Z:3.0 E:0.0 Count: A:100 B:200 C:300")
    assert ok.kind is ReplyKind.OK
    assert ok.position["Z"] == 3.0
    assert ok.temperatures == {}


@pytest.mark.parametrize(
    ("line", "number"),
    [("Resend: 5", 5), ("Resend:5", 5), ("rs 7", 7), ("rs N8", 8), ("RESEND: 9", 9)],
)
def test_resend_forms(line: str, number: int) -> None:
    reply = parse_reply(line)
    assert reply.kind is ReplyKind.RESEND
    assert reply.number == number


@pytest.mark.parametrize(
    ("line", "error_class", "number"),
    [
        ("Error:checksum mismatch, Last Line: 9", ErrorClass.CHECKSUM, 9),
        ("Error:Line Number is not Last Line Number+1, Last Line: 41", ErrorClass.LINENO, 41),
        ("Error:No Checksum with line number, Last Line: 3", ErrorClass.FORMAT, 3),
        ("Error:No Line Number with checksum, Last Line: 3", ErrorClass.FORMAT, 3),
        ("Error: expected line 106 got 107", ErrorClass.LINENO, 105),  # VirtualPrinter
        ("Error: Checksum mismatch", ErrorClass.CHECKSUM, None),  # VirtualPrinter
        ("Error: Missing checksum", ErrorClass.FORMAT, None),  # VirtualPrinter
        ("Error:Thermal Runaway, system stopped! Heater_ID: 0", ErrorClass.FATAL, None),
        ("Error:Printer halted. kill() called!", ErrorClass.FATAL, None),
        ("Error:MINTEMP triggered, system stopped! Heater_ID: bed", ErrorClass.FATAL, None),
        ("!! Lost communication with MCU 'mcu'", ErrorClass.FATAL, None),
    ],
)
def test_errors_are_classified(line: str, error_class: ErrorClass, number: int | None) -> None:
    reply = parse_reply(line)
    assert reply.kind is ReplyKind.ERROR
    assert reply.error_class is error_class
    assert reply.number == number


def test_virtual_printer_names_the_line_it_got() -> None:
    assert parse_reply("Error: expected line 106 got 107").got == 107


def test_busy_wait_echo_action_start() -> None:
    assert parse_reply("echo:busy: processing").kind is ReplyKind.BUSY
    assert parse_reply("busy: processing").kind is ReplyKind.BUSY
    assert parse_reply("wait").kind is ReplyKind.WAIT
    assert parse_reply('echo:Unknown command: "M999x"').kind is ReplyKind.ECHO
    action = parse_reply("//action:pause")
    assert (action.kind, action.message) == (ReplyKind.ACTION, "pause")
    assert parse_reply("//action:prompt_begin Heater Timeout").message.startswith("prompt_begin")
    assert parse_reply("start").kind is ReplyKind.START
    # a line that merely ends in "ok" is not an acknowledgement
    assert parse_reply("SD card ok").kind is ReplyKind.OTHER


@pytest.mark.parametrize(
    ("glued", "parts"),
    [
        ("Error: Checksum mismatchResend:105ok", ["Error: Checksum mismatch", "Resend:105", "ok"]),
        ("okokwait", ["ok", "ok", "wait"]),
        ("waitok T:21.30/ 0.00 @:64", ["wait", "ok T:21.30/ 0.00 @:64"]),
        (
            "FIRMWARE_NAME:Virtual Marlin 1.0 PROTOCOL_VERSION:1.0"
            "Cap:AUTOREPORT_TEMP:1Cap:EEPROM:0ok",
            [
                "FIRMWARE_NAME:Virtual Marlin 1.0 PROTOCOL_VERSION:1.0",
                "Cap:AUTOREPORT_TEMP:1",
                "Cap:EEPROM:0",
                "ok",
            ],
        ),
        ("Resend:105", ["Resend:105"]),
        ("ok N12 P15 B3", ["ok N12 P15 B3"]),
        ("SD card ok", ["SD card ok"]),
        ('echo:Unknown command: "token"', ['echo:Unknown command: "token"']),
    ],
)
def test_split_replies_glued_without_newlines(glued: str, parts: list[str]) -> None:
    assert split_replies(glued) == parts
