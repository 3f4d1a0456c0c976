"""Fabrication requests between shops: signed requests, signed status updates, their log."""
