"""Protocol simulators that serve a real pty: sim-marlin and sim-grbl."""
