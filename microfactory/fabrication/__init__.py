"""Turning designs into G-code: bounded OpenSCAD and PrusaSlicer workers, slicer profiles."""
