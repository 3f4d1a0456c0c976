"""The materials inventory operators keep: what is on hand, and what is loaded where."""
