"""Machines: the registry of the shop's machines and their live status."""
