"""The work behind each command, as plain functions that return data (and render it separately)."""
