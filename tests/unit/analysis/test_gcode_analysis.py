"""The G-code analyser against the shared sample files and small hand-written programs."""

from __future__ import annotations

import base64
import json
import math
import random
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise
from pathlib import Path

import pytest

from microfactory.analysis import (
    AnalysisError,
    GcodeAnalysis,
    MachineLimits,
    analyse_gcode,
    analyse_gcode_async,
    shutdown_analysis_pool,
)
from tests import samples

DATA = samples.DATA
GCODE = DATA / "gcode"
FDM = sorted((GCODE / "fdm").glob("*.gcode"))
SAMPLES = sorted(p for p in GCODE.rglob("*") if p.is_file())


@cache
def analysed(path: Path) -> GcodeAnalysis:
    """Analyse each sample once per test session."""
    return analyse_gcode(path)


def test_every_sample_is_present() -> None:
    names = {p.name for p in SAMPLES}
    assert {"cube.gcode", "bracket.gcode", "laser-spiral.nc"} <= names
    assert {"helloworld-cambam.nc", "pocket-and-contour.nc"} <= names


@pytest.mark.parametrize(
    ("name", "process"),
    [
        ("cube.gcode", "fdm"),
        ("bracket.gcode", "fdm"),
        ("helloworld-cambam.nc", "cnc"),
        ("pocket-and-contour.nc", "cnc"),
        ("laser-spiral.nc", "laser"),
    ],
)
def test_process_is_detected(name: str, process: str) -> None:
    path = next(p for p in SAMPLES if p.name == name)
    assert analysed(path).process == process


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_line_count_and_size_match_the_file(path: Path) -> None:
    result = analysed(path)
    data = path.read_bytes()
    assert result.size_bytes == len(data)
    assert result.line_count == data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    assert result.move_count > 0
    assert result.estimated_time_s > 0


@pytest.mark.parametrize("path", FDM, ids=lambda p: p.name)
def test_fdm_estimate_is_within_two_percent_of_prusaslicer(path: Path) -> None:
    result = analysed(path)
    assert result.slicer_estimated_time_s is not None
    error = result.estimated_time_s / result.slicer_estimated_time_s - 1
    assert abs(error) < 0.02, f"{path.name}: {error:+.2%}"


@pytest.mark.parametrize("path", FDM, ids=lambda p: p.name)
def test_fdm_filament_is_within_one_percent_of_the_slicer(path: Path) -> None:
    result = analysed(path)
    assert result.slicer_filament_mm is not None
    assert result.slicer_filament_g is not None
    assert result.filament_mm == pytest.approx(result.slicer_filament_mm, rel=0.01)
    assert result.filament_g == pytest.approx(result.slicer_filament_g, rel=0.01)


@pytest.mark.parametrize("path", FDM, ids=lambda p: p.name)
def test_fdm_metadata_temperatures_and_layers(path: Path) -> None:
    result = analysed(path)
    assert result.slicer == "PrusaSlicer"
    assert result.slicer_version == "2.5.0"
    assert result.metadata["filament_type"] == "PLA"
    assert result.metadata["nozzle_diameter"] == "0.4"
    assert result.metadata["layer_height"] == "0.2"
    assert result.max_hotend_c == 215
    assert result.max_bed_c == 60
    assert result.units == "mm"
    assert result.limits_source == "file"
    untimed = {"M109": 1, "M190": 1}
    if path.name.startswith("klipper-"):  # its start macro levels the bed
        untimed["BED_MESH_CALIBRATE"] = 1
    assert result.untimed_commands == untimed
    assert result.firmware_commands == []
    assert result.thumbnails == []
    markers = path.read_bytes().count(b";LAYER_CHANGE")
    assert result.layers == markers


@pytest.mark.parametrize("path", FDM, ids=lambda p: p.name)
def test_fdm_bounds_sit_on_the_220_mm_bed(path: Path) -> None:
    box = analysed(path).bbox_mm
    assert box is not None
    assert 0 < box.min_x < box.max_x < 220
    assert 0 < box.min_y < box.max_y < 220
    assert box.min_z == pytest.approx(0.2)  # first layer height
    assert box.max_z <= 250


def test_cube_is_a_20_mm_cube_with_a_skirt() -> None:
    box = analysed(GCODE / "fdm" / "cube.gcode").bbox_mm
    assert box is not None
    assert box.max_z == pytest.approx(20.0)
    # The skirt sits 6 mm out from the 20 mm cube, so the extrusions span about 32.7 mm.
    assert box.size[0] == pytest.approx(32.714, abs=0.01)


def test_inch_program_with_arcs_is_converted_and_segmented() -> None:
    result = analysed(GCODE / "cnc" / "helloworld-cambam.nc")
    assert result.units == "inch"
    assert result.process == "cnc"
    box = result.bbox_mm
    assert box is not None
    # The engraving is +-3 inch wide, 1/1000 inch deep.
    assert box.min_x == pytest.approx(-76.2, abs=0.01)
    assert box.max_x == pytest.approx(76.2, abs=0.01)
    assert box.min_z == pytest.approx(-0.0254, abs=1e-4)
    text = (GCODE / "cnc" / "helloworld-cambam.nc").read_text()
    arcs = sum(1 for line in text.splitlines() if line.startswith(("G2 ", "G3 ")))
    assert arcs > 50
    assert result.move_count > 2 * arcs  # each arc became several straight segments
    # Feed moves run at 60 in/min at most, so the time is at least length / feed.
    assert result.estimated_time_s > result.travel_distance_mm / (60 * 25.4 / 60) * 0.5


def test_pocket_program_counts_its_dwell_and_full_circles() -> None:
    result = analysed(GCODE / "cnc" / "pocket-and-contour.nc")
    assert result.max_spindle_s == 12000
    box = result.bbox_mm
    assert box is not None
    assert (box.min_x, box.min_y, box.min_z) == (-2.0, -2.0, -2.0)
    assert (box.max_x, box.max_y) == (42.0, 42.0)
    # Two passes of four full circles (r = 3, 6, 9, 12 mm) at 10 mm/s, plus a 2 s dwell.
    circles = 2 * sum(2 * math.pi * r for r in (3, 6, 9, 12))
    contour = 2 * 4 * 44
    assert result.travel_distance_mm > circles + contour
    assert result.estimated_time_s > circles / 10 + contour / (800 / 60) + 2


def test_laser_program_reads_power_and_stays_flat() -> None:
    result = analysed(GCODE / "laser" / "laser-spiral.nc")
    assert result.process == "laser"
    assert result.max_spindle_s == 1000  # the spiral at S300/S600, the frame at S1000
    box = result.bbox_mm
    assert box is not None
    assert box.min_z == box.max_z == 0.0
    assert box.size[0] == pytest.approx(30.0)


def test_result_is_json_ready() -> None:
    data = analysed(GCODE / "fdm" / "cube.gcode").as_dict()
    text = json.dumps(data)
    assert '"process": "fdm"' in text
    assert data["bbox_mm"]["max_z"] == pytest.approx(20.0)
    assert "slicer_config" in data


# -- both parsing paths agree ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [p for p in SAMPLES if p.name != "vase.gcode"], ids=lambda p: p.name
)
def test_slow_path_gives_the_same_answer_as_the_fast_path(path: Path) -> None:
    # A trailing comment sends every line through the Python interpreter instead of the
    # vectorised scan; bracket.gcode also spans two scan slices.
    fast = analysed(path)
    lines = path.read_text().splitlines()
    slow = analyse_gcode("\n".join(f"{line} ; x" if line[:1] in "GXYZ" else line for line in lines))
    assert slow.estimated_time_s == pytest.approx(fast.estimated_time_s, rel=1e-9)
    assert slow.filament_mm == pytest.approx(fast.filament_mm, rel=1e-9)
    assert slow.bbox_mm == fast.bbox_mm
    assert slow.move_count == fast.move_count
    assert slow.max_spindle_s == fast.max_spindle_s
    assert slow.process == fast.process


def test_crlf_and_tabs_do_not_change_the_result() -> None:
    path = GCODE / "fdm" / "cube.gcode"
    fast = analysed(path)
    data = path.read_bytes().replace(b"G1 X", b"G1\tX").replace(b"\n", b"\r\n")
    other = analyse_gcode(data)
    assert other.estimated_time_s == pytest.approx(fast.estimated_time_s, rel=1e-12)
    assert other.filament_mm == fast.filament_mm
    assert other.line_count == fast.line_count


# -- modes, resets and units -----------------------------------------------------------------

ABSOLUTE = """\
M201 X1000 Y1000 Z100 E5000
M203 X200 Y200 Z10 E50
M204 P1000 R1000 T1000
M205 X8 Y8 Z0.4 E4
G90
M82
G92 E0
G1 X0 Y0 Z0.2 F6000
G1 X50 Y0 E2.5 F1800
G1 X50 Y50 E5.0
G1 E4.0 F2400
G92 E0
G1 X0 Y50 F6000
G1 E1.0 F2400
G1 X0 Y0 E3.5 F1800
"""

RELATIVE = """\
M201 X1000 Y1000 Z100 E5000
M203 X200 Y200 Z10 E50
M204 P1000 R1000 T1000
M205 X8 Y8 Z0.4 E4
G91
M83
G1 X0 Y0 Z0.2 F6000
G1 X50 Y0 E2.5 F1800
G1 X0 Y50 E2.5
G1 E-1.0 F2400
G1 X-50 Y0 F6000
G1 E1.0 F2400
G1 X0 Y-50 E2.5 F1800
"""


def test_relative_and_absolute_programs_agree() -> None:
    a = analyse_gcode(ABSOLUTE)
    r = analyse_gcode(RELATIVE)
    assert a.filament_mm == pytest.approx(7.5)  # 2.5 + 2.5 + 2.5; the retraction nets out
    assert r.filament_mm == pytest.approx(a.filament_mm)
    assert r.estimated_time_s == pytest.approx(a.estimated_time_s, rel=1e-9)
    assert r.bbox_mm == a.bbox_mm
    assert a.bbox_mm is not None
    assert a.bbox_mm.size == pytest.approx((50.0, 50.0, 0.0))


def test_inches_scale_positions_and_feeds() -> None:
    mm = analyse_gcode("G21\nM3 S1000\nG1 Z-1 F100\nG1 X25.4 Y25.4 F254\n")
    inch = analyse_gcode("G20\nM3 S1000\nG1 Z-0.03937007874 F3.937007874\nG1 X1 Y1 F10\n")
    assert inch.units == "inch"
    assert inch.bbox_mm is not None
    assert mm.bbox_mm is not None
    assert inch.bbox_mm.max_x == pytest.approx(25.4)
    assert inch.estimated_time_s == pytest.approx(mm.estimated_time_s, rel=1e-6)


def test_time_grows_with_distance_and_shrinks_with_feed() -> None:
    slow = analyse_gcode("G1 X100 F600\nG1 X0\n")
    fast = analyse_gcode("G1 X100 F6000\nG1 X0\n")
    assert slow.estimated_time_s == pytest.approx(200 / 10, rel=0.02)  # 10 mm/s, tiny accel share
    assert fast.estimated_time_s < slow.estimated_time_s / 5


def test_empty_programs_and_zero_feed() -> None:
    nothing = analyse_gcode("; only a comment\nG91\nM83\n")
    assert nothing.move_count == 0
    assert nothing.estimated_time_s == 0
    assert nothing.bbox_mm is None
    assert nothing.process == "unknown"
    # F0 is ignored, as Marlin does: the move keeps the previous feed.
    assert analyse_gcode("G1 X10 F600\nG1 X20 F0\n").estimated_time_s == pytest.approx(2, rel=0.05)


def test_machine_limits_apply_when_the_file_has_none() -> None:
    program = "".join(f"G1 X{10 * (i % 2)} Y{i} F12000\n" for i in range(200))
    default = analyse_gcode(program)
    gentle = analyse_gcode(
        program, machine_limits=MachineLimits(print_acceleration=200, travel_acceleration=200)
    )
    assert default.limits_source == "defaults"
    assert gentle.limits_source == "machine_limits"
    assert gentle.estimated_time_s > default.estimated_time_s * 1.5
    with_file = analyse_gcode("M204 P200 R200 T200\n" + program)
    assert with_file.limits_source == "file"
    assert with_file.estimated_time_s == pytest.approx(gentle.estimated_time_s, rel=1e-9)


def test_junction_deviation_is_used_when_given() -> None:
    square = "M205 J0.02\n" + "G1 X20 Y0 F6000\nG1 X20 Y20\nG1 X0 Y20\nG1 X0 Y0\n" * 10
    jd = analyse_gcode(square)
    jerk = analyse_gcode(square.replace("M205 J0.02", "M205 X10 Y10"))
    assert jd.estimated_time_s > 0
    assert jerk.estimated_time_s > 0
    assert jd.estimated_time_s != pytest.approx(jerk.estimated_time_s, rel=1e-3)


def test_dwells_use_the_firmware_units() -> None:
    base = analyse_gcode("G1 X10 F600\n").estimated_time_s
    marlin = analyse_gcode("M104 S200\nG1 X10 F600\nG4 P1500\nG4 S2\n").estimated_time_s
    grbl_base = analyse_gcode("M3 S1000\nG1 X10 F600\n").estimated_time_s
    grbl = analyse_gcode("M3 S1000\nG1 X10 F600\nG4 P1.5\n").estimated_time_s
    assert marlin == pytest.approx(base + 3.5, abs=0.01)
    assert grbl == pytest.approx(grbl_base + 1.5, abs=0.01)


def test_full_circle_arc_has_the_right_length() -> None:
    result = analyse_gcode("M3 S1000\nG0 X10 Y0\nG1 Z-1 F100\nG2 X10 Y0 I-10 J0 F600\n")
    assert result.process == "cnc"
    box = result.bbox_mm
    assert box is not None
    assert (box.min_x, box.max_x) == pytest.approx((-10.0, 10.0), abs=0.01)
    assert (box.min_y, box.max_y) == pytest.approx((-10.0, 10.0), abs=0.01)
    circle = 2 * math.pi * 10
    assert result.travel_distance_mm == pytest.approx(10 + 1 + circle, rel=1e-3)


def test_radius_arcs_take_the_short_way_for_positive_r() -> None:
    short = analyse_gcode("M3 S100\nG1 Z-1 F100\nG2 X20 Y0 R10 F600\n")
    long_ = analyse_gcode("M3 S100\nG1 Z-1 F100\nG2 X20 Y0 R-10 F600\n")
    half = math.pi * 10
    assert short.travel_distance_mm == pytest.approx(1 + half, rel=1e-3)
    assert long_.travel_distance_mm == pytest.approx(1 + half, rel=1e-3)  # 180 deg either way
    quarter = analyse_gcode("M3 S100\nG1 Z-1 F100\nG2 X10 Y10 R10 F600\n")
    three_q = analyse_gcode("M3 S100\nG1 Z-1 F100\nG2 X10 Y10 R-10 F600\n")
    assert quarter.travel_distance_mm == pytest.approx(1 + half / 2, rel=1e-3)
    assert three_q.travel_distance_mm == pytest.approx(1 + 1.5 * half, rel=1e-3)


@pytest.mark.parametrize("comment", ["", " ; slow path"])
def test_modal_cnc_lines_repeat_the_last_motion(comment: str) -> None:
    explicit = analyse_gcode("M3 S1\nG1 Z-1 F300\nG1 X10\nG1 Y10\nG1 X0\n")
    modal = analyse_gcode(f"M3 S1\nG1 Z-1 F300\nX10{comment}\nY10\nX0{comment}\n")
    assert modal.travel_distance_mm == pytest.approx(explicit.travel_distance_mm)
    assert modal.estimated_time_s == pytest.approx(explicit.estimated_time_s)
    # Before any motion word GRBL is in G0; after an arc, bare words are straight feeds.
    rapid = analyse_gcode(f"M3 S1\nX10 Y10{comment}\nG1 Z-1 F60\n")
    assert rapid.bbox_mm is not None
    assert rapid.bbox_mm.min_x == 10.0  # the first move was a rapid, not part of the work
    after_arc = analyse_gcode(f"M3 S1\nG1 Z-1 F300\nG2 X10 Y0 I5 J0\nX20{comment}\n")
    assert after_arc.travel_distance_mm == pytest.approx(1 + math.pi * 5 + 10, rel=1e-3)


# -- risks, metadata and thumbnails ------------------------------------------------------------


def test_firmware_altering_commands_are_listed_with_lines() -> None:
    program = "\n".join(
        [
            "G21",
            "M92 E415",
            "M500 ; save",
            "M502",
            "M303 E0 S215 C8",
            "M997",
            "$32=1",
            "$RST=*",
            "$N0=G20",
            "G10 L20 P1 X0 Y0",
            "G28.1",
            "G1 X1 F100",
        ]
    )
    commands = analyse_gcode(program).firmware_commands
    found = {(c.line, c.command.split()[0].split("=")[0]) for c in commands}
    assert found == {
        (2, "M92"),
        (3, "M500"),
        (4, "M502"),
        (5, "M303"),
        (6, "M997"),
        (7, "$32"),
        (8, "$RST"),
        (9, "$N0"),
        (10, "G10"),
        (11, "G28.1"),
    }
    persistent = {c.command for c in commands if c.persistent}
    assert "M500" in persistent
    assert "M92" not in persistent


def test_grbl_laser_mode_setting_marks_a_laser_file() -> None:
    result = analyse_gcode("$32=1\nG21 G90\nM3 S0\nG1 X10 Y10 S500 F1000\nM5\n")
    assert result.process == "laser"
    assert [c.command for c in result.firmware_commands] == ["$32=1"]


def _tiny_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_prusaslicer_thumbnails_are_extracted() -> None:
    png = base64.b64encode(_tiny_png()).decode()
    rows = [png[i : i + 20] for i in range(0, len(png), 20)]
    block = "\n".join(
        [
            "; generated by PrusaSlicer 2.7.1 on 2024-01-01 at 00:00:00 UTC",
            ";",
            f"; thumbnail begin 2x2 {len(png)}",
            *(f"; {r}" for r in rows),
            "; thumbnail end",
            ";",
            "; thumbnail_JPG begin 2x2 8",
            "; AAAAAAAA",
            "; thumbnail_JPG end",
            "M104 S200",
            "G1 X10 Y10 E1 F1200",
            "; estimated printing time (normal mode) = 1d 2h 3m 4s",
            "; printer_model = MK4",
        ]
    )
    result = analyse_gcode(block)
    assert len(result.thumbnails) == 1
    thumb = result.thumbnails[0]
    assert (thumb.width, thumb.height) == (2, 2)
    assert base64.b64decode(thumb.png_base64) == _tiny_png()
    assert result.slicer_estimated_time_s == 86400 + 2 * 3600 + 3 * 60 + 4
    assert result.metadata["printer_model"] == "MK4"
    assert result.slicer_version == "2.7.1"
    assert any("JPG" in note for note in result.notes)


def test_cura_header_is_read() -> None:
    program = "\n".join(
        [
            ";FLAVOR:Marlin",
            ";TIME:6666",
            ";Filament used: 1.5m",
            ";Layer height: 0.2",
            ";Generated with Cura_SteamEngine 5.4.0",
            "M140 S60",
            "M109 S210",
            ";LAYER:0",
            "G1 X10 Y10 E1 F1200",
            ";LAYER:1",
            "G1 Z0.4",
            "G1 X20 Y20 E2",
        ]
    )
    result = analyse_gcode(program)
    assert result.slicer == "Cura"
    assert result.slicer_version == "5.4.0"
    assert result.slicer_estimated_time_s == 6666
    assert result.slicer_filament_mm == 1500
    assert result.metadata["layer_height"] == "0.2"
    assert result.metadata["gcode_flavor"] == "Marlin"
    assert result.layers == 2
    assert result.max_bed_c == 60
    assert result.max_hotend_c == 210


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"  \n\n\t\n", "empty"),
        (b"G1 X1\n\x00\x01\x02binary", "not a text G-code file"),
        (b"G1 X1 ; caf\xe9\n", "not a text G-code file"),
        (bytes(range(256)) * 4, "not a text G-code file"),
    ],
)
def test_bad_content_is_refused_clearly(content: bytes, message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        analyse_gcode(content)


def test_binary_file_on_disk_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "part.gcode"
    path.write_bytes(b"GCDE\x01\x00\x00\x00" + bytes(200))  # PrusaSlicer's binary G-code
    with pytest.raises(AnalysisError, match=r"not a text G-code file: part\.gcode"):
        analyse_gcode(path)
    with pytest.raises(AnalysisError, match="cannot read"):
        analyse_gcode(tmp_path / "missing.gcode")


def test_odd_numbers_fall_back_to_the_interpreter() -> None:
    # Words the vectorised scan will not take are read the way Marlin's parser reads them.
    result = analyse_gcode("G1 X+10 Y.5 F600\nG1 X-.5 Y5. \nG1 X1.2.3\nG1 X 4 Y4\n")
    assert result.move_count == 4
    assert result.process == "unknown"
    assert result.bbox_mm is not None  # unknown process: the bounds of the feed moves
    assert (result.bbox_mm.min_x, result.bbox_mm.max_x) == (-0.5, 10.0)
    path = math.dist((0, 0), (10, 0.5)) + math.dist((10, 0.5), (-0.5, 5))
    path += math.dist((-0.5, 5), (1.2, 5)) + math.dist((1.2, 5), (4, 4))
    assert result.travel_distance_mm == pytest.approx(path, abs=1e-3)


def test_non_ascii_comments_are_fine() -> None:
    result = analyse_gcode("; Drucker für Käse ✓\nM104 S200\nG1 X10 E1 F600\n".encode())
    assert result.process == "fdm"
    assert result.filament_mm == pytest.approx(1.0)


# -- async ----------------------------------------------------------------------------------


async def test_async_runs_in_a_worker_process() -> None:
    path = GCODE / "fdm" / "cube.gcode"
    try:
        result = await analyse_gcode_async(path)
    finally:
        shutdown_analysis_pool()
    assert result.estimated_time_s == analysed(path).estimated_time_s


async def test_async_accepts_an_executor_and_reports_errors() -> None:
    with ThreadPoolExecutor(1) as pool:
        result = await analyse_gcode_async("G1 X10 F600\nG1 Y10\n", executor=pool)
        assert result.move_count == 2
        with pytest.raises(AnalysisError):
            await analyse_gcode_async(b"\x00\x00\n", executor=pool)


# -- number parsing ------------------------------------------------------------------------


def test_vectorised_numbers_equal_python_floats() -> None:
    # The scan parses numbers eight bytes at a time; every format a slicer or CAM program
    # writes must come out exactly as float() reads it.
    rnd = random.Random(42)
    xs: list[float] = []
    lines = ["M83", "M104 S200"]
    for i in range(5000):
        digits = rnd.choice([0, 1, 2, 3, 5, 8])
        whole = rnd.choice([0, 1, 9, 42, 123, 9999, 1234567])
        text = f"{whole}.{rnd.randrange(10**digits):0{digits}d}" if digits else str(whole)
        text = rnd.choice(["", "-", "+"]) + rnd.choice([text, text.lstrip("0") or "0"])
        if text.endswith(".") or rnd.random() < 0.05:
            text = text.rstrip(".") or "0"
        xs.append(float(text))
        lines.append(f"G1 X{text} Y{i % 7} E0.01")
    result = analyse_gcode("\n".join(lines) + "\n")
    box = result.bbox_mm
    assert box is not None
    assert box.min_x == round(min(xs), 4)
    assert box.max_x == round(max(xs), 4)
    assert result.filament_mm == pytest.approx(50.0, abs=1e-6)
    points = [(0.0, 0.0)] + [(x, i % 7) for i, x in enumerate(xs)]
    expected = sum(math.dist(a, b) for a, b in pairwise(points))
    assert result.extrude_distance_mm == pytest.approx(expected, rel=1e-9)


def test_tool_changes_and_homing() -> None:
    result = analyse_gcode("M104 S200\nT0\nG1 X10 E1 F600\nT1\nG1 X20 E2\nT1\nG28 X\n")
    assert result.tool_changes == 1
    # G28 X is timed as a move back to X0 at the current feed, as PrusaSlicer does.
    assert result.travel_distance_mm == pytest.approx(20.0)
    assert result.extrude_distance_mm == pytest.approx(20.0)


def test_modes_apply_to_moves_on_their_own_line() -> None:
    split = analyse_gcode("G1 X10 F600\nG91\nG1 X10\nG90\nG1 X5\n")
    same = analyse_gcode("G1 X10 F600\nG91 G1 X10\nG90 G1 X5\n")
    assert same.travel_distance_mm == pytest.approx(split.travel_distance_mm)
    assert same.travel_distance_mm == pytest.approx(10 + 10 + 15)
