"""What the running process passes on and knows: the argv for torchrun, torchrun's world size."""

from __future__ import annotations

import os

_LAUNCH_ARGV: list[str] = []  # main fills it (in place) with the argv that `train --nproc N` passes on


def _world_size() -> int:
    """torchrun's WORLD_SIZE (1 when unset or not a number: then no rank speaks for others)."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        return 1
