"""Mutualised costs: rates, membership plans and monthly statements from the usage log."""
