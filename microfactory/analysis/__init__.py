"""File analysis: G-code (time, filament, bounds, risks) and meshes (STL, 3MF)."""

from microfactory.analysis.gcode import (
    AnalysisError,
    BoundingBox,
    FirmwareCommand,
    GcodeAnalysis,
    MachineLimits,
    Thumbnail,
    analyse_gcode,
    analyse_gcode_async,
    limits_from_dict,
    shutdown_analysis_pool,
)
from microfactory.analysis.mesh import MeshAnalysis, analyse_3mf, analyse_mesh, analyse_stl

__all__ = [
    "AnalysisError",
    "BoundingBox",
    "FirmwareCommand",
    "GcodeAnalysis",
    "MachineLimits",
    "MeshAnalysis",
    "Thumbnail",
    "analyse_3mf",
    "analyse_gcode",
    "analyse_gcode_async",
    "analyse_mesh",
    "analyse_stl",
    "limits_from_dict",
    "shutdown_analysis_pool",
]
