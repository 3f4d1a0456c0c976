"""Fabrication jobs: uploads, approval, dispatch to a machine, and their life until cleared."""
