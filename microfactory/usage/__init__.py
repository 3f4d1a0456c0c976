"""The usage log: an append-only record of every machine session."""
