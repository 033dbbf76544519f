"""The one checkpoint module: atomic saves and safe loads.

Files are read with ``torch.load(weights_only=True)``, so a checkpoint can hold tensors and plain
data but never run code. Saves go to a temporary file in the same folder, are flushed to disk, then
renamed over the target, so a crash leaves either the old file or the new one, never half of one.

Plugin factories use :func:`load_weights_into` to apply a ``--weights PATH`` file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cvkit.errors import CheckpointError

FORMAT = "cvkit-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(payload: dict, path) -> Path:
    """Write ``payload`` to ``path`` atomically."""
    import torch

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write checkpoint ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise CheckpointError(f"{path}: cannot write checkpoint ({exc.strerror or exc})") from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def load_file(path, *, option: str = "checkpoint") -> object:
    """Read a torch file safely; every failure is one line naming the file."""
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{option} {path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{option} {path}: is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{option} {path}: not a cvkit checkpoint or state dict (empty file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in str(exc) or "weights_only" in str(exc):
            raise CheckpointError(
                f"{option} {path}: refused, the file holds Python objects that could run code "
                f"(only tensors and plain data are loaded)") from None
        raise CheckpointError(f"{option} {path}: not a cvkit checkpoint or state dict ({first})") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError) as exc:
        raise CheckpointError(
            f"{option} {path}: not a cvkit checkpoint or state dict ({type(exc).__name__})") from None


def is_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_state_dict(path, *, option: str = "--weights") -> dict:
    """The model weights in ``path``: a plain state dict, or the model state of a cvkit checkpoint."""
    import torch

    obj = load_file(path, option=option)
    if is_checkpoint(obj):
        obj = obj.get("model_state")
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if (not isinstance(obj, dict) or not obj
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        raise CheckpointError(f"{option} {path}: not a cvkit checkpoint or state dict (no tensors by name)")
    return obj


def load_weights_into(model, path, *, head: str | None = None, option: str = "--weights") -> list[str]:
    """Load the weights file ``path`` into ``model``; returns the keys left at their initial values.

    ``head`` is the prefix of the classifier layer (e.g. ``"fc"``): its weights are dropped when
    their shapes differ from the model's, so weights trained for another class count still give the
    backbone. Any other mismatch is an error naming the file and the first differing keys.
    """
    state = load_state_dict(path, option=option)
    own = model.state_dict()
    reset: list[str] = []  # head keys deliberately left at their fresh initial values
    if head:
        prefix = head.rstrip(".") + "."
        if any(k in own and own[k].shape != v.shape for k, v in state.items() if k.startswith(prefix)):
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
            reset = [k for k in own if k.startswith(prefix)]
    missing = [k for k in own if k not in state and k not in reset]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{k} has shape {tuple(state[k].shape)}, the model needs {tuple(own[k].shape)}")
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise CheckpointError(f"{option} {path}: weights do not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False)
    return reset
