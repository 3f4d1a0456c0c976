"""The firmware allow-list: what a slicer or CAM program emits runs; anything else needs a yes.

Each refused program here was run by a printer in the issue: a text file marked `finished`,
M112 killing the printer, M211 S0 turning endstops off until the next reset, and so on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from microfactory.analysis import analyse_gcode
from microfactory.analysis.commands import check_program, refusal_message
from tests import samples

SAMPLES = sorted(p for p in samples.GCODE.rglob("*") if p.is_file())


def analysed(text: str) -> dict[str, Any]:
    return analyse_gcode(text.encode()).as_dict()


def refusal(text: str, firmware: str = "marlin", allowed: bool = False) -> str | None:
    return refusal_message(check_program(analysed(text), firmware), allowed)


FDM = "G28\nG1 Z0.2 F3000\nM104 S200\nG1 X10 Y10 E1 F1200\n"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_slicer_and_cam_sample_passes_as_it_is(path: Path) -> None:
    data = analyse_gcode(path).as_dict()
    firmware = "marlin" if data["process"] == "fdm" else "grbl"
    if path.name.startswith("klipper-"):  # start and end macros: only Klipper runs them
        firmware = "klipper"
    check = check_program(data, firmware)
    assert refusal_message(check, allowed_by_operator=False) is None, check


def test_a_text_file_is_not_gcode() -> None:
    why = refusal("hello this is not gcode\n")
    assert why is not None
    assert "not a G-code program" in why
    assert "HELLO THIS IS NOT GCODE" in why
    # Permission does not turn prose into a program.
    assert refusal("hello this is not gcode\n", allowed=True) == why


def test_a_program_without_motion_is_not_a_program() -> None:
    why = refusal("M104 S200\nM140 S60\n")
    assert why is not None
    assert "no motion" in why


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("M112", "emergency stop"),
        ("M211 S0", "software endstops"),
        ("M906 X1200", "motor currents"),
        ("M413 S0", "power-loss recovery"),
        ("M540 S0", "abort-on-endstop-hit"),
        ("M552 S1", "network interface"),
        ("M500", "EEPROM"),
        ("M42 P13 S255", "pin"),
    ],
)
def test_commands_outside_the_allow_list_need_permission(line: str, shown: str) -> None:
    text = FDM + line + "\nG1 X20 Y20 E2\n"
    why = refusal(text)
    assert why is not None
    command = line.split()[0]
    assert f"{command} (line 5: " in why
    assert shown in why
    assert "allow_firmware_commands" in why
    assert refusal(text, allowed=True) is None


def test_unknown_command_is_named_with_what_we_know() -> None:
    why = refusal(FDM + "M9999\n")
    assert why is not None
    assert "M9999 (line 5: not a command slicers write for fdm on marlin)" in why


def test_grbl_settings_and_system_commands_need_permission() -> None:
    text = "G21\nG90\n$32=1\n$H\nG0 X1 Y1\nG1 X2 F100\n"
    why = refusal(text, firmware="grbl")
    assert why is not None
    assert "$32=" in why
    assert "$H (line 4: runs the homing cycle)" in why


def test_marlin_commands_are_not_grbl_commands() -> None:
    # GRBL answers M105 and M104 with error:20; refuse them before they reach the mill.
    why = refusal("G21\nM104 S200\nG1 X10 F300\n", firmware="grbl")
    assert why is not None
    assert "M104" in why


@pytest.mark.parametrize("comment", ["", " ; a comment does not count"])
def test_lines_longer_than_the_firmware_takes_are_refused_even_with_permission(
    comment: str,
) -> None:
    fits = "G1 X1." + "0" * 67 + " E1 F1200"
    assert len(fits) == 82  # Marlin's 95, less "N1234567 " and "*123"
    assert refusal(FDM + fits + comment + "\n") is None
    longer = fits.replace("E1 ", "E12 ")
    why = refusal(FDM + longer + comment + "\n", allowed=True)
    assert why is not None
    assert "line 5 has 83 characters; marlin takes at most 82" in why
    # GRBL drops spaces, then keeps 79 characters.
    grbl_line = "G1 X" + "1" * 40 + " Y" + "2" * 35
    assert len(grbl_line.replace(" ", "")) == 79
    assert refusal(f"G21\n{grbl_line}{comment}\n", firmware="grbl") is None
    why = refusal(f"G21\n{grbl_line}3{comment}\n", firmware="grbl")
    assert why is not None
    assert "grbl takes at most 79" in why


def test_an_analysis_from_before_the_checks_is_left_to_the_deny_list() -> None:
    old = {"process": "fdm", "move_count": 3, "firmware_commands": []}
    assert refusal_message(check_program(old, "marlin"), allowed_by_operator=False) is None


def test_grbl_tool_change_is_refused_as_grbl_would() -> None:
    why = refusal("G21\nT1 M6\nG0 X1\n", firmware="grbl")
    assert why is not None
    assert "M6 (line 2: tool change: standard GRBL answers error:20" in why


# -- Klipper (moonraker machines) ---------------------------------------------------------

KLIPPER_START = """\
PRINT_START BED=60 EXTRUDER=215
SET_HEATER_TEMPERATURE HEATER=extruder TARGET=200
TEMPERATURE_WAIT SENSOR=extruder MINIMUM=195
BED_MESH_CALIBRATE ADAPTIVE=1
SET_VELOCITY_LIMIT ACCEL=3000 SQUARE_CORNER_VELOCITY=5
SET_PRESSURE_ADVANCE ADVANCE=0.04
EXCLUDE_OBJECT_DEFINE NAME=cube_id_0_copy_0 CENTER=110,110 POLYGON=[[100,100],[120,100],[120,120]]
M486 S0
M486 Acube_id_0_copy_0
EXCLUDE_OBJECT_START NAME='cube id 0'
set_fan_speed fan=part_fan speed=0.5
"""
KLIPPER_END = "EXCLUDE_OBJECT_END NAME='cube id 0'\nM486 S-1\nPRINT_END\n"


def test_klipper_commands_and_macros_run_on_a_klipper_printer() -> None:
    text = KLIPPER_START + FDM + KLIPPER_END
    data = analysed(text)
    check = check_program(data, "klipper")
    assert refusal_message(check, allowed_by_operator=False) is None, check
    assert check.macros == ["PRINT_END", "PRINT_START"]  # the printer's own, not Klipper's
    assert data["extended_commands"]["EXCLUDE_OBJECT_DEFINE"] == 1
    assert data["extended_lines"]["SET_HEATER_TEMPERATURE"] == 2
    assert data["commands"]["M486"] == 3
    # Its words are not read as G-code: no tool change from TARGET=, no moves from EXTRUDER.
    assert data["tool_changes"] == 0
    assert data["move_count"] == 2
    assert data["untimed_commands"]["BED_MESH_CALIBRATE"] == 1


def test_klipper_commands_are_not_gcode_for_marlin() -> None:
    why = refusal(KLIPPER_START + FDM, firmware="marlin")
    assert why is not None
    assert "not a G-code program for marlin" in why
    assert "line 1: PRINT_START" in why
    assert "only a Klipper printer runs" in why
    # PrusaSlicer's M486 object labels are G-code Marlin runs, though.
    assert refusal("M486 S0\nM486 Acube_id_0\n" + FDM + "M486 S-1\n", firmware="marlin") is None


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("SAVE_CONFIG", "printer.cfg"),
        ("FIRMWARE_RESTART", "the print is lost"),
        ("SET_KINEMATIC_POSITION Z=0", "without homing"),
        ("FORCE_MOVE STEPPER=stepper_x DISTANCE=10 VELOCITY=5", "ignoring the kinematics"),
        ("PID_CALIBRATE HEATER=extruder TARGET=210", "PID autotune"),
        ("SET_TMC_CURRENT STEPPER=stepper_x CURRENT=1.5", "motor currents"),
        ("SET_PIN PIN=caselight VALUE=1", "output pin"),
        ("M112", "emergency stop"),
    ],
)
def test_klipper_built_ins_that_change_the_printer_need_permission(line: str, shown: str) -> None:
    text = FDM + line + "\nG1 X20 Y20 E2\n"
    why = refusal(text, firmware="klipper")
    assert why is not None
    assert f"{line.split()[0]} (line 5: " in why
    assert shown in why
    assert "a klipper machine" in why
    assert refusal(text, firmware="klipper", allowed=True) is None


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # Klipper answers "Malformed command" to a parameter without `=`.
        ("SET_HEATER_TEMPERATURE HEATER extruder\n", "not G-code commands (line 5"),
        ("SET_DISPLAY_TEXT MSG='unclosed\n", "not G-code commands (line 5"),
        ("hello this is not gcode\n", "not G-code commands"),
    ],
)
def test_what_klipper_cannot_parse_is_refused_even_with_permission(text: str, shown: str) -> None:
    why = refusal(FDM + text, firmware="klipper", allowed=True)
    assert why is not None
    assert shown in why


def test_inches_stop_a_klipper_print_and_are_refused_even_with_permission() -> None:
    text = "G20\nG28\nG1 X1 Y1 F100\n"
    why = refusal(text, firmware="klipper", allowed=True)
    assert why is not None
    assert "line 1: G20" in why
    assert "Machine does not support G20" in why
    assert refusal(text, firmware="marlin") is None  # Marlin has inches


def test_a_moonraker_machine_checks_programs_as_klipper() -> None:
    from microfactory.analysis.commands import FIRMWARE_OF_DRIVER, firmwares_of

    assert FIRMWARE_OF_DRIVER["moonraker"] == "klipper"
    assert firmwares_of(["moonraker", "marlin", "manual"]) == ["klipper", "marlin"]
