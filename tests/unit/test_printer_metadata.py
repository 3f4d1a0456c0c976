"""A printer host's reading of a job's file (Moonraker's metadata) fills what ours lacks."""

from __future__ import annotations

from pathlib import Path

from microfactory.jobs.media import (
    apply_printer_metadata,
    largest_png,
    printer_thumbnail_path,
    read_thumbnail,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
META = {
    "source": "moonraker",
    "file": "mf-part-1234.gcode",
    "slicer": "OrcaSlicer",
    "slicer_version": "2.1.1",
    "estimated_time_s": 1234.0,
    "filament_mm": 500.0,
    "filament_g": 1.5,
    "layer_height_mm": 0.2,
    "object_height_mm": 10.0,
    "thumbnails": [
        {"width": 32, "height": 32, "size": 900, "relative_path": ".thumbs/p-32x32.png"},
        {"width": 300, "height": 300, "size": 9000, "relative_path": ".thumbs/p-300x300.png"},
        {"width": 400, "height": 400, "size": 9000, "relative_path": ".thumbs/p-400x400.jpg"},
    ],
}


def test_what_our_analysis_lacks_is_filled_and_ours_is_kept() -> None:
    ours = {"slicer": None, "slicer_estimated_time_s": None, "slicer_filament_g": 1.4}
    best = largest_png(META["thumbnails"])
    assert best is not None
    assert best["relative_path"] == ".thumbs/p-300x300.png"  # the JPG is not shown
    merged = apply_printer_metadata({**ours, "thumbnails": [], "metadata": {}}, META, best)
    assert merged["slicer"] == "OrcaSlicer"
    assert merged["slicer_estimated_time_s"] == 1234.0
    assert merged["slicer_filament_g"] == 1.4  # our reading of the same footer stays
    assert merged["slicer_filament_mm"] == 500.0
    assert merged["metadata"]["layer_height"] == "0.2"
    assert merged["thumbnails"] == [{"width": 300, "height": 300, "source": "printer"}]
    assert merged["printer_metadata"]["thumbnails"][0] == {"width": 32, "height": 32}
    assert "relative_path" not in str(merged["printer_metadata"])
    # A file with a thumbnail of its own keeps it listed.
    own = [{"width": 16, "height": 16}]
    assert apply_printer_metadata({"thumbnails": own}, META, best)["thumbnails"] == own


def test_the_hosts_thumbnail_is_served_when_the_file_has_none(tmp_path: Path) -> None:
    stored = tmp_path / "abc.gcode"
    stored.write_text("G28\nG1 X1\n")
    assert read_thumbnail(stored) is None
    printer_thumbnail_path(tmp_path, "abc.gcode").write_bytes(PNG)
    assert read_thumbnail(stored) == PNG
    printer_thumbnail_path(tmp_path, "abc.gcode").write_bytes(b"<html>not an image")
    assert read_thumbnail(stored) is None
