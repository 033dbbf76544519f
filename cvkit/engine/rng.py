"""Seeding, and the random state a checkpoint saves and a resume restores (Python's, torch's, the
loader's generator, CUDA's)."""

from __future__ import annotations

import random


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def rng_state(loader) -> dict:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "loader": loader.generator.get_state() if loader.generator is not None else None}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, loader) -> None:
    import torch

    if not state:
        return
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if state.get("loader") is not None and loader.generator is not None:
        loader.generator.set_state(state["loader"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
