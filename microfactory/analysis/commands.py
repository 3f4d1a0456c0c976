"""What may reach a machine: G-code checked against an allow-list per process and firmware.

A program is accepted as it is only when it parses as G-code (every line a command, at least
one motion), every command word is one that slicers or CAM programs emit for that process on
that firmware, and every line fits the firmware's line buffer. Any other command needs an
operator's permission for the job (`allow_firmware_commands`), and the refusal names each
command with what it does, so the operator knows what they allow.

The lists are what PrusaSlicer, SuperSlicer, OrcaSlicer and Cura write for Marlin printers,
and what Fusion, FreeCAD, CamBam, Estlcam, LightBurn and LaserGRBL posts write for GRBL
mills and lasers. Everything else (M112 emergency stop, M211 S0 endstops off, M906 motor
currents, M413 power-loss recovery, M540 endstop abort, M552 network, EEPROM writes, GRBL `$`
settings) is outside them.

Klipper printers (the `moonraker` driver) also run Klipper's extended commands and the
printer's own macros (`NAME KEY=VALUE`, e.g. `SET_HEATER_TEMPERATURE HEATER=extruder
TARGET=200`, `PRINT_START`). A name Klipper does not define is taken for a macro of the
printer's configuration (Klipper answers "Unknown command" to one it lacks, and prints on);
the built-ins that save or restart the configuration, bypass the kinematics or calibrate need
permission like Marlin's EEPROM writes. Klipper refuses `G20` (it has no inch mode) and a
parameter without `=` ("Malformed command"): such programs are refused as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

# The firmware family behind each driver; manual machines run no G-code.
FIRMWARE_OF_DRIVER: Final[Mapping[str, str]] = {
    "marlin": "marlin",
    "sim-marlin": "marlin",
    "octoprint": "marlin",
    "prusalink": "marlin",  # Prusa firmware is Marlin-based (MK3: Marlin 1, MK4: Marlin 2)
    "grbl": "grbl",
    "sim-grbl": "grbl",
    "moonraker": "klipper",
}

# The longest command line (comments removed) each firmware takes.
# Marlin: MAX_CMD_SIZE 96 bytes with the terminator, less the host's "N<line> " and "*<sum>"
# (up to 13 characters for programs of under 10 million lines). GRBL: LINE_BUFFER_SIZE 80,
# 79 characters once GRBL has dropped spaces.
MAX_LINE_CHARS: Final[Mapping[str, int]] = {"marlin": 95 - 13, "grbl": 79}

_MOTION: Final = frozenset({"G0", "G1", "G2", "G3"})


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# What slicers emit for FDM printers on Marlin (and Prusa's Marlin fork), by group: motion,
# units, homing and levelling; extruder mode, heaters, fans and waits; motors, messages,
# progress, print timer, beeps and object labels; motion limits and speed, flow and pressure
# factors (RAM only, reset at power-up); filament change and pauses the slicer places on
# purpose; Prusa's printer and firmware checks, print area (M555), mesh levelling on; tools.
_FDM_MARLIN: Final = _words(
    """
    G0 G1 G2 G3 G4 G10 G11 G17 G20 G21 G28 G29 G80 G90 G91 G92
    M82 M83 M104 M105 M106 M107 M109 M140 M141 M155 M190 M191 M400
    M17 M18 M84 M73 M75 M76 M77 M117 M118 M300 M486
    M201 M203 M204 M205 M220 M221 M900 M572 M593
    M0 M1 M600 M601
    M115 M862.1 M862.3 M862.5 M862.6 M420 M555
    T
    """
)
# What CAM posts emit for GRBL mills, and GRBL 1.1 runs: motion, planes, units, machine and
# work coordinates, path and distance modes, feed modes; stops, program end, spindle, flood
# coolant, tool number. Not M6 or M7: standard GRBL builds answer them with error:20.
_CNC_GRBL: Final = _words(
    """
    G0 G1 G2 G3 G4 G10 G17 G18 G19 G20 G21 G28 G30 G40 G43.1 G49 G53
    G54 G55 G56 G57 G58 G59 G61 G80 G90 G91 G91.1 G92 G92.1 G93 G94
    M0 M1 M2 M30 M3 M4 M5 M8 M9 T
    """
)
# Klipper runs the same words (G10/G11 with [firmware_retraction], M486 with
# [exclude_object]); Marlin-only ones it answers "Unknown command" and goes on. Not G20:
# "Machine does not support G20 (inches) command" stops the print.
_FDM_KLIPPER_GCODE: Final = _FDM_MARLIN - {"G20"}
# Klipper's own extended commands that slicers, start/end macros and print-time tools emit:
# heaters, fans and waits; motion limits, pressure advance, retraction, input shaper, skew;
# mesh and gantry levelling; object labels (exclude_object); offsets and saved states;
# messages, print info, pauses and the idle timeout; extruders; LEDs; timelapse frames.
KLIPPER_EXTENDED: Final = _words(
    """
    SET_HEATER_TEMPERATURE TEMPERATURE_WAIT SET_FAN_SPEED SET_TEMPERATURE_FAN_TARGET
    SET_VELOCITY_LIMIT SET_PRESSURE_ADVANCE SET_RETRACTION SET_INPUT_SHAPER SET_SKEW
    SKEW_PROFILE BED_MESH_CALIBRATE BED_MESH_PROFILE BED_MESH_CLEAR BED_MESH_OFFSET
    BED_MESH_MAP QUAD_GANTRY_LEVEL Z_TILT_ADJUST EXCLUDE_OBJECT_DEFINE EXCLUDE_OBJECT_START
    EXCLUDE_OBJECT_END EXCLUDE_OBJECT SET_GCODE_OFFSET SAVE_GCODE_STATE RESTORE_GCODE_STATE
    RESPOND SET_DISPLAY_TEXT SET_PRINT_STATS_INFO SET_IDLE_TIMEOUT PAUSE RESUME
    ACTIVATE_EXTRUDER SYNC_EXTRUDER_MOTION SET_LED TIMELAPSE_TAKE_FRAME UPDATE_DELAYED_GCODE
    SET_GCODE_VARIABLE GET_POSITION QUERY_ENDSTOPS QUERY_PROBE STATUS HELP
    """
)
# Klipper built-ins a program runs only with an operator's permission, with what they do.
KLIPPER_MEANINGS: Final[Mapping[str, str]] = {
    "SAVE_CONFIG": "writes the calibration results into printer.cfg and restarts Klipper",
    "RESTART": "restarts Klipper's host software: the print in progress is lost",
    "FIRMWARE_RESTART": "restarts Klipper and its microcontrollers: the print is lost",
    "SET_KINEMATIC_POSITION": "tells Klipper the toolhead is somewhere without homing "
    "(moves after it can crash into the frame)",
    "FORCE_MOVE": "moves one stepper directly, ignoring the kinematics and the endstops",
    "SET_STEPPER_ENABLE": "switches a stepper motor on or off by hand",
    "STEPPER_BUZZ": "oscillates a stepper motor back and forth",
    "PID_CALIBRATE": "runs PID autotune: a heater at full power, new PID values",
    "SHAPER_CALIBRATE": "shakes the printer at its resonance frequencies (input shaper tuning)",
    "TEST_RESONANCES": "shakes the printer at its resonance frequencies",
    "PROBE_CALIBRATE": "starts a manual probe Z-offset calibration that waits for an operator",
    "Z_ENDSTOP_CALIBRATE": "starts a manual Z endstop calibration that waits for an operator",
    "MANUAL_PROBE": "starts a manual probe that waits for an operator",
    "DELTA_CALIBRATE": "recalibrates delta geometry",
    "BED_TILT_CALIBRATE": "recalibrates the bed tilt",
    "Z_OFFSET_APPLY_PROBE": "changes the probe's Z offset for the next SAVE_CONFIG",
    "Z_OFFSET_APPLY_ENDSTOP": "changes the Z endstop position for the next SAVE_CONFIG",
    "SET_TMC_CURRENT": "sets stepper motor currents (too high overheats motors and drivers)",
    "SET_TMC_FIELD": "writes a stepper driver register",
    "INIT_TMC": "re-initialises the stepper drivers",
    "SET_PIN": "sets an output pin of the microcontroller directly",
    "SET_SERVO": "moves a servo",
    "SDCARD_PRINT_FILE": "starts another print from the printer's storage",
    "SDCARD_RESET_FILE": "unloads the print file",
    "CANCEL_PRINT": "cancels the print from inside it",
    "SET_EXTRUDER_ROTATION_DISTANCE": "changes the extruder's calibration (rotation distance)",
    "SET_HEATER_PID": "changes a heater's PID values",
}

# Laser programs on GRBL (laser mode): the same words, power as S with M3/M4.
_LASER_GRBL: Final = _CNC_GRBL
# Marlin-driven lasers and spindles (LASER_FEATURE / SPINDLE_FEATURE).
_LASER_MARLIN: Final = _words(
    "G0 G1 G2 G3 G4 G21 G28 G90 G91 G92 M0 M1 M3 M4 M5 M84 M106 M107 M117 M400"
)

ALLOWED: Final[Mapping[tuple[str, str], frozenset[str]]] = {
    ("fdm", "marlin"): _FDM_MARLIN,
    ("fdm", "klipper"): _FDM_KLIPPER_GCODE,
    ("cnc", "grbl"): _CNC_GRBL,
    ("laser", "grbl"): _LASER_GRBL,
    ("cnc", "marlin"): _LASER_MARLIN,
    ("laser", "marlin"): _LASER_MARLIN,
}

# What the commands outside the lists do, for the operator who is asked to allow them.
MEANINGS: Final[Mapping[str, str]] = {
    "M112": "emergency stop: kills the firmware, the machine must be reset by hand",
    "M211": "switches software endstops (M211 S0 lets axes run past their limits; it persists)",
    "M906": "sets stepper motor currents (TMC drivers): too high overheats motors and drivers",
    "M413": "switches power-loss recovery (M413 S0 turns it off)",
    "M540": "switches abort-on-endstop-hit for SD prints",
    "M552": "switches the network interface on or off",
    "M500": "saves the settings to EEPROM (they persist across power cycles)",
    "M501": "loads the settings from EEPROM, dropping the ones in use",
    "M502": "resets the settings to factory defaults",
    "M503": "reports the settings",
    "M997": "starts a firmware update",
    "M999": "restarts the firmware after a halt",
    "M303": "runs PID autotune: heaters on at full power, new PID values",
    "M301": "changes hotend PID values",
    "M304": "changes bed PID values",
    "M92": "changes steps per unit (wrong values ruin every later print)",
    "M206": "changes home offsets",
    "M428": "sets home offsets from the current position",
    "M851": "changes the probe offset (a wrong Z offset crashes the nozzle into the bed)",
    "M665": "changes delta geometry",
    "M666": "changes endstop adjustments",
    "M907": "changes motor currents",
    "M350": "changes microstepping",
    "M569": "changes stepper driver modes",
    "M913": "changes hybrid-threshold speeds (TMC)",
    "M914": "changes stallguard sensitivity (sensorless homing)",
    "M42": "sets a microcontroller pin directly",
    "M226": "waits for a pin state",
    "M80": "switches the power supply on",
    "M81": "switches the power supply off",
    "M302": "allows cold extrusion (grinds filament, can jam the extruder)",
    "M120": "switches endstops on",
    "M121": "switches endstops off",
    "M999 S0": "restarts the firmware",
    "G10 L2": "writes work offsets to EEPROM",
    "G28.1": "stores the G28 position in EEPROM (GRBL)",
    "G30.1": "stores the G30 position in EEPROM (GRBL)",
    "G38.2": "probes toward the work until contact (without a probe the tool crashes)",
    "G38.3": "probes toward the work until contact",
    "G38.4": "probes away from the work",
    "G38.5": "probes away from the work",
    "M6": "tool change: standard GRBL answers error:20 (pause with M0 to change tools)",
    "M7": "mist coolant: off in standard GRBL builds (error:20)",
    "$H": "runs the homing cycle",
    "$X": "clears the alarm lock without homing (the position may be wrong)",
    "$RST=": "restores GRBL's EEPROM defaults",
    "$I=": "writes the build info to EEPROM",
    "$N0=": "stores a startup block that runs at every reset",
    "$N1=": "stores a startup block that runs at every reset",
    "$C": "switches check mode",
    "$J=": "jogs",
    "$SLP": "puts GRBL to sleep",
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A command a program may not send without permission, and why."""

    command: str
    line: int
    meaning: str

    def __str__(self) -> str:
        return f"{self.command} (line {self.line}: {self.meaning})"


@dataclass(slots=True)
class ProgramCheck:
    """The outcome of checking a program against one firmware."""

    firmware: str
    not_gcode: str | None = None  # why the file is not a program at all
    too_long: str | None = None  # a line the firmware cannot take
    unsupported: str | None = None  # a command the firmware refuses, stopping the print
    # Klipper: extended command names that are not Klipper's own, taken for printer macros
    macros: list[str] = field(default_factory=list)
    needs_permission: list[Refusal] = field(default_factory=list)


def meaning(command: str, process: str, firmware: str) -> str:
    """Say what a command does, or that it is not one slicers or CAM programs emit."""
    if firmware == "klipper" and command in KLIPPER_MEANINGS:
        return KLIPPER_MEANINGS[command]
    if command in MEANINGS:
        return MEANINGS[command]
    if command.startswith("$") and command.endswith("="):
        return f"writes GRBL setting {command[:-1]} to EEPROM (it persists)"
    return f"not a command {_writers(process)} write for {process} on {firmware}"


def _writers(process: str) -> str:
    return "slicers" if process == "fdm" else "CAM programs"


def firmwares_of(drivers: Iterable[str]) -> list[str]:
    """Return the firmware families of these drivers (manual machines have none)."""
    return sorted({FIRMWARE_OF_DRIVER[d] for d in drivers if d in FIRMWARE_OF_DRIVER})


def check_program(analysis: Mapping[str, Any], firmware: str) -> ProgramCheck:
    """Check an analysed program (GcodeAnalysis.as_dict()) against one firmware's lists."""
    result = ProgramCheck(firmware)
    commands: Mapping[str, int] | None = analysis.get("commands")
    if commands is None:
        return result  # analysed before these checks existed: the deny-list still applies
    unparsed = int(analysis.get("unparsed_lines") or 0)
    if unparsed:
        examples = analysis.get("unparsed_examples") or []
        where = f" (line {examples[0][0]}: {examples[0][1]!r})" if examples else ""
        result.not_gcode = (
            f"this is not a G-code program: {unparsed} line(s) are not G-code commands{where}"
        )
        return result
    extended: Mapping[str, int] = analysis.get("extended_commands") or {}
    extended_lines: Mapping[str, int] = analysis.get("extended_lines") or {}
    if extended and firmware != "klipper":
        first = min(extended, key=lambda name: int(extended_lines.get(name, 0)))
        result.not_gcode = (
            f"this is not a G-code program for {firmware}: {sum(extended.values())} line(s) "
            f"are Klipper commands or macros (line {extended_lines.get(first, 0)}: {first}), "
            "which only a Klipper printer runs"
        )
        return result
    if not any(commands.get(word) for word in _MOTION) and not analysis.get("move_count"):
        result.not_gcode = "this is not a G-code program: it has no motion (G0, G1, G2 or G3)"
        return result
    limit = MAX_LINE_CHARS.get(firmware)
    longest = analysis.get("longest_line")
    if limit is not None and longest:
        line_no, length, text = longest
        if firmware == "grbl":
            length = len(str(text).replace(" ", "").replace("\t", "")) if text else length
        if length > limit:
            result.too_long = (
                f"line {line_no} has {length} characters; {firmware} takes at most {limit} "
                "per line (split it, or shorten its numbers)"
            )
    process = str(analysis.get("process") or "unknown")
    allowed = ALLOWED.get((process, firmware))
    if allowed is None:  # unknown process: anything either list allows on this firmware
        allowed = frozenset().union(*(v for (_, fw), v in ALLOWED.items() if fw == firmware))
    lines: Mapping[str, int] = analysis.get("command_lines") or {}
    refusals = {
        word: Refusal(word, int(lines.get(word, 0)), meaning(word, process, firmware))
        for word in commands
        if word not in allowed
    }
    if firmware == "klipper":
        for word in extended:
            if word in KLIPPER_MEANINGS:
                line = int(extended_lines.get(word, 0))
                refusals[word] = Refusal(word, line, KLIPPER_MEANINGS[word])
            elif word not in KLIPPER_EXTENDED:
                result.macros.append(word)
        result.macros.sort()
        if commands.get("G20"):
            result.unsupported = (
                f"line {int(lines.get('G20', 0))}: G20 (inch units) stops the print on Klipper "
                '("Machine does not support G20 (inches) command"); slice it in millimetres'
            )
    # The analyser's own finds look at parameters too (G10 L2 is allowed G10, but persists).
    for found in analysis.get("firmware_commands") or []:
        word = str(found.get("command", "")).split(" ", 1)[0]
        if word not in refusals:
            refusals[word] = Refusal(
                str(found.get("command", word))[:40], int(found.get("line", 0)), found["reason"]
            )
    result.needs_permission = sorted(refusals.values(), key=lambda r: r.line)
    return result


def refusal_message(check: ProgramCheck, allowed_by_operator: bool) -> str | None:
    """Return why this program may not run on the firmware, or None if it may."""
    if check.not_gcode:
        return check.not_gcode
    if check.too_long:
        return check.too_long
    if check.unsupported:
        return check.unsupported
    if check.needs_permission and not allowed_by_operator:
        shown = "; ".join(str(r) for r in check.needs_permission[:5])
        more = len(check.needs_permission) - 5
        extra = f"; and {more} more" if more > 0 else ""
        return (
            f"this program sends commands a {check.firmware} machine runs only with an "
            f"operator's permission for this job (allow_firmware_commands): {shown}{extra}"
        )
    return None


__all__ = [
    "ALLOWED",
    "FIRMWARE_OF_DRIVER",
    "KLIPPER_EXTENDED",
    "KLIPPER_MEANINGS",
    "MAX_LINE_CHARS",
    "MEANINGS",
    "ProgramCheck",
    "Refusal",
    "check_program",
    "firmwares_of",
    "meaning",
    "refusal_message",
]
