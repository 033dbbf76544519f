"""The one checkpoint module: atomic saves and safe loads.

Files are read with ``torch.load(weights_only=True)``, so a checkpoint can hold tensors and plain
data but never run code. Saves go to a temporary file in the same folder, are flushed to disk, then
renamed over the target, so a crash leaves either the old file or the new one, never half of one.

Plugin factories use :func:`load_weights_into` to apply a ``--weights PATH`` file (a state dict, a
cvkit checkpoint, or a ``.safetensors`` file, read without pickle).
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

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(payload, f)

    return atomic_write(path, write, where=str(path), failure="cannot write checkpoint")


def atomic_write(path, write, *, where: str, failure: str) -> Path:
    """Make ``path`` with ``write(tmp)``, which fills a temporary file in the same folder; it is then
    flushed to disk and renamed over ``path``, so a crash leaves the old file or the new one, never
    part of one, and a failure leaves nothing behind. An ``OSError`` becomes one line,
    ``"{where}: {failure} (reason)"``; any other exception propagates after the clean-up."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise CheckpointError(f"{where}: {failure} ({exc.strerror or exc})") from None
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        for leftover in (tmp, tmp + ".data"):  # .data: an exporter's external weights, if it made them
            try:
                os.unlink(leftover)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise CheckpointError(f"{where}: {failure} ({exc.strerror or exc})") from None
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


_TRUST_ENV = "CVKIT_TRUST_CHECKPOINTS"


def trusted() -> bool:
    """Whether the user chose to load checkpoints with full pickle (``cvkit --trust-checkpoints``)."""
    return os.environ.get(_TRUST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def trust_checkpoints() -> None:
    os.environ[_TRUST_ENV] = "1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        # The weights-only unpickler names the class or function it refused ("Unsupported global:
        # GLOBAL os.system ..."); any other failure (a text file, a plain pickle) is just not a checkpoint.
        if "GLOBAL" in str(exc) or "Unsupported global" in str(exc) or "Unsupported class" in str(exc):
            if not trusted():
                raise CheckpointError(
                    f"{option} {path}: refused, the file holds Python objects that could run code "
                    f"(only tensors and plain data are loaded; if you trust its author, see "
                    f"--trust-checkpoints)") from None
            from cvkit import ui

            ui.warn(f"{option} {path}: loading with full pickle (--trust-checkpoints): this file can run "
                    f"any code on this machine")
            return torch.load(path, map_location="cpu", weights_only=False)
        if "Weights only load failed" in str(exc):
            first = "not a file written by torch.save"
        raise CheckpointError(f"{option} {path}: not a cvkit checkpoint or state dict ({first})") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError) as exc:
        raise CheckpointError(
            f"{option} {path}: not a cvkit checkpoint or state dict ({type(exc).__name__})") from None


def is_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_safetensors(path, *, option: str = "--weights", tensors: bool = True) -> tuple[dict, dict]:
    """(tensors by name, the header's ``__metadata__``) of a ``.safetensors`` file: no pickle involved.
    With ``tensors=False`` only the header is read (the tensors come back empty)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{option} {path}: {'is a directory' if path.is_dir() else 'no such file'}")
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:  # a core dependency; only a broken install lacks it
        raise CheckpointError(f"{option} {path}: reading .safetensors needs the safetensors package: "
                              f"pip install safetensors") from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return ({k: f.get_tensor(k) for k in f.keys()} if tensors else {}), dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{option} {path}: not a readable .safetensors file ({first})") from None


def load_state_dict(path, *, option: str = "--weights") -> dict:
    """The model weights in ``path``: a plain state dict, the model state of a cvkit checkpoint, or
    the tensors of a ``.safetensors`` file."""
    import torch

    if Path(path).suffix == ".safetensors":
        obj = load_safetensors(path, option=option)[0]
    else:
        obj = load_file(path, option=option)
    if is_checkpoint(obj):
        obj = obj.get("model_state")
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if (not isinstance(obj, dict) or not obj
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        raise CheckpointError(f"{option} {path}: not a cvkit checkpoint or state dict (no tensors by name)")
    return obj


def load_model_state(model, state: dict, *, strict: bool = True):
    """``model.load_state_dict(state)``, with the model's own module versions where ``state`` has
    none (a cvkit checkpoint stores plain tensors by name): modules that convert old layouts on
    loading (torchvision's mnasnet) need them."""
    from collections import OrderedDict

    if getattr(state, "_metadata", None) is None:
        state = OrderedDict(state)
        state._metadata = getattr(model.state_dict(), "_metadata", None)
    return model.load_state_dict(state, strict=strict)


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
        mismatched = [k for k, v in state.items() if k.startswith(prefix) and k in own and own[k].shape != v.shape]
        if mismatched:
            from cvkit import ui

            k = mismatched[0]
            ui.warn(f"{option} {path}: {k} has shape {tuple(state[k].shape)}, this model needs "
                    f"{tuple(own[k].shape)} (another class count): {head} starts fresh, the rest is loaded")
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
    load_model_state(model, state, strict=False)
    return reset


def versions() -> dict:
    import platform

    import torch
    import torchvision

    from cvkit import __version__

    # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses
    return {"cvkit": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def make_checkpoint(*, model, spec, classes, transform_name, transform, config: dict, run: dict, epoch: int,
                    metrics: dict, history: list, best: dict, optimizer=None, scheduler=None,
                    scaler=None, rng: dict | None = None, model_state: dict | None = None,
                    interrupted: dict | None = None) -> dict:
    """A self-describing checkpoint: everything needed to rebuild, evaluate, predict and resume.

    Only tensors and plain data, so it loads with ``torch.load(weights_only=True)``.

    ``epoch`` is the last completed epoch and ``rng`` the random state at the start of the next.
    ``interrupted`` is None, except in a ``last.pt`` saved when training was stopped by a signal
    in the middle of an epoch: then the weights, optimizer and scaler are those after step
    ``interrupted["step"]`` of epoch ``interrupted["epoch"]`` (= ``epoch + 1``), and the record
    holds what ``cvkit.engine.phase.run_phase`` needs to continue that epoch exactly (see ``fit``).
    """
    import datetime

    state = model_state if model_state is not None else model.state_dict()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {
            "name": spec.name, "plugin": spec.plugin, "num_classes": len(classes),
            "input_size": list(spec.input_size), "mean": list(spec.mean), "std": list(spec.std),
            "default_transforms": spec.default_transforms, "resize": spec.resize,
            "interpolation": spec.interpolation,
        },
        "classes": list(classes),
        "transform": {"name": transform_name, "train": False, "input_size": list(spec.input_size),
                      "mean": list(spec.mean), "std": list(spec.std), "repr": repr(transform)},
        "config": config,
        "run": run,
        "epoch": epoch,
        "metrics": metrics,
        "history": history,
        "best": best,
        "model_state": {k: v.detach().cpu() for k, v in state.items()},
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
        "scaler_state": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng,
        "interrupted": interrupted,
        "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def load_checkpoint(path, *, option: str = "--checkpoint") -> dict:
    """A cvkit checkpoint (``best.pt``/``last.pt``, or a ``.safetensors`` file ``cvkit export``
    wrote: its weights and the description in its header); a clear error for anything else."""
    if Path(path).suffix == ".safetensors":
        from cvkit.describe import from_strings

        tensors, props = load_safetensors(path, option=option)
        return as_checkpoint(from_strings(props, where=f"{option} {path}"), tensors)
    obj = load_file(path, option=option)
    if not is_checkpoint(obj):
        raise CheckpointError(f"{option} {path}: not a cvkit checkpoint (a plain state dict? "
                              f"use it with --weights instead)")
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{option} {path}: written by a newer cvkit (format "
                              f"{obj.get('format_version')}); upgrade cvkit to read it")
    return obj


def find_checkpoint(value=None, *, option: str = "--checkpoint", name: str = "best.pt") -> Path:
    """A checkpoint file, the ``name`` file of a run directory, or with None the newest run's."""
    if value is None:
        return latest_checkpoint(name=name)
    path = Path(value)
    if path.is_dir():
        path = path / name
    if not path.exists():
        raise CheckpointError(f"{option} {value}: no such checkpoint ({path})")
    return path


def latest_checkpoint(runs_dir="runs", name: str = "best.pt") -> Path:
    """The ``best.pt`` of the newest run under ``runs_dir``; an error saying how to make one if none."""
    root = Path(runs_dir)
    found = sorted(root.glob(f"*/{name}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not found:
        raise CheckpointError(f"no --checkpoint given and no run with a {name} under ./{runs_dir}/; "
                              f"train one first: cvkit train DATA --model net")
    return found[-1]


def as_checkpoint(meta: dict, state: dict | None = None) -> dict:
    """A checkpoint dict, as :func:`cvkit.checkpoint.load_checkpoint` returns, from a description
    (and the weights): what eval and predict need to rebuild the model."""
    rebuild = meta.get("cvkit_model") or {}
    model = rebuild.get("model") or {"name": meta["model"], "plugin": "?", "num_classes": len(meta["classes"]),
                                     "input_size": meta["input_size"], "mean": meta["mean"], "std": meta["std"],
                                     "default_transforms": meta.get("transform"), "resize": meta["resize"],
                                     "interpolation": meta["interpolation"]}
    transform = rebuild.get("transform") or {"name": meta.get("transform"), "train": False}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model, "classes": list(meta["classes"]),
            "transform": transform, "config": rebuild.get("config") or {}, "model_state": state,
            "exported": {k: v for k, v in meta.items() if k != "cvkit_model"}}
