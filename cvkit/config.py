"""Training options: defaults, a YAML file, and the command line, merged in that order.

Every option has one name; a YAML file may spell it with dashes or underscores
(``batch-size: 64`` or ``batch_size: 64``). Only ``yaml.safe_load`` is used: a config file cannot
construct Python objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvkit.errors import UsageError


@dataclass
class TrainConfig:
    data: str | None = None
    model: str = "net"
    epochs: int = 25
    batch_size: int = 32
    recipe: str = "default"  # the defaults of what is None below (cvkit.recipes)
    lr: float | None = None
    optimizer: str | None = None
    loss: str | None = None
    scheduler: str | None = None
    warmup_epochs: float | None = None  # epochs of linear warm-up, for schedulers that take it
    transforms: str | None = None  # None: the model's default
    weights: str | None = None  # None: the model's default
    dataset: str = "imagefolder"
    val_split: float | None = None
    device: str = "auto"
    precision: str = "auto"
    workers: int | str = "auto"
    seed: int = 0
    patience: int | None = None
    callbacks: list = field(default_factory=list)  # names of registered callbacks (cvkit list callbacks)
    on_bad_image: str = "error"  # or "skip": drop unreadable images up front and list them
    out: str | None = None
    mixup: float = 0.0  # MixUp's Beta alpha (0: off)
    cutmix: float = 0.0  # CutMix's Beta alpha (0: off)
    ema: float | None = None  # decay of the weights' moving average (None: off)
    accumulate: int = 1  # batches per optimizer step
    clip_grad: float | None = None  # largest gradient norm (None: no clipping)
    balance: str | None = None  # "sampler" or "loss": weigh the classes by the training split's counts
    options: dict = field(default_factory=dict)  # {"optimizer": {"momentum": 0.5}, ...}

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# What a value of each option may be; None is allowed where the default is None.
_TYPES = {
    "data": (str,), "model": (str,), "epochs": (int,), "batch_size": (int,), "recipe": (str,), "lr": (float, int),
    "warmup_epochs": (float, int), "mixup": (float, int), "cutmix": (float, int), "ema": (float, int),
    "accumulate": (int,), "clip_grad": (float, int), "balance": (str,),
    "optimizer": (str,), "loss": (str,), "scheduler": (str,), "transforms": (str,), "weights": (str,),
    "dataset": (str,), "val_split": (float, int), "device": (str,), "precision": (str,),
    "workers": (int, str), "seed": (int,), "patience": (int,), "callbacks": (list,), "on_bad_image": (str,),
    "out": (str,),
    "options": (dict,),
}


def _check_value(key: str, value: Any, where: str | None) -> Any:
    """Check one option; ``where`` names the config file, or None for the command line."""
    label = key if where else f"--{key.replace('_', '-')}"
    where = f"{where}: " if where else ""
    if value is None:
        if FIELDS[key].default is None:
            return None
        raise UsageError(f"{where}{label} cannot be empty")
    types = _TYPES[key]
    if isinstance(value, bool) or not isinstance(value, types):
        expected = " or ".join(t.__name__ for t in types)
        raise UsageError(f"{where}{label} must be {expected}, got {value!r}")
    if key == "on_bad_image" and value not in ("error", "skip"):
        raise UsageError(f"{where}{label} must be error or skip, got {value!r}")
    if key == "workers" and isinstance(value, str) and value != "auto":
        raise UsageError(f"{where}{label} must be a number or 'auto', got {value!r}")
    if key in ("epochs", "batch_size") and value < 1:
        raise UsageError(f"{where}{label} must be at least 1, got {value}")
    if key in ("lr", "clip_grad") and not value > 0:
        raise UsageError(f"{where}{label} must be positive, got {value}")
    if key in ("warmup_epochs", "mixup", "cutmix") and not value >= 0:
        raise UsageError(f"{where}{label} must be 0 or more, got {value}")
    if key == "ema" and not 0 < value < 1:
        raise UsageError(f"{where}{label} must be between 0 and 1 (e.g. 0.999), got {value}")
    if key == "accumulate" and value < 1:
        raise UsageError(f"{where}{label} must be at least 1, got {value}")
    if key == "balance" and value not in ("sampler", "loss"):
        raise UsageError(f"{where}{label} must be sampler or loss, got {value!r}")
    if key == "val_split" and not 0 < value < 1:
        raise UsageError(f"{where}{label} must be between 0 and 1, got {value}")
    if key == "patience" and value < 1:
        raise UsageError(f"{where}{label} must be at least 1, got {value}")
    if key == "callbacks" and not all(isinstance(v, str) and v.strip() for v in value):
        raise UsageError(f"{where}{label} must be a list of callback names, got {value!r}")
    if key == "options":
        for kind, opts in value.items():
            if not isinstance(opts, dict):
                raise UsageError(f"{where}{label}.{kind} must be a mapping of option names to values")
    return float(value) if key in _FLOATS else value


def _strict_loader():
    """yaml.SafeLoader (no Python tags: ``!!python/...`` is an error) that also refuses a key given
    twice in one mapping, where YAML would silently keep the last."""
    import yaml

    class StrictSafeLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictSafeLoader


_FLOATS = {"lr", "val_split", "warmup_epochs", "mixup", "cutmix", "ema", "clip_grad"}


def read_config_file(path) -> dict:
    """The options in a YAML file, checked against the known names and types."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: cannot read ({exc})") from None
    try:
        raw = yaml.load(text, Loader=_strict_loader())  # safe_load's loader, refusing duplicate keys
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"--config {path}: invalid YAML{where} ({getattr(exc, 'problem', exc)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(f"--config {path}: expected a mapping of option names to values")
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            import difflib

            close = difflib.get_close_matches(name, list(FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"--config {path}: unknown key {key!r}{hint}")
        if name in _FLOATS and isinstance(value, str):
            value = _float_or_same(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if name == "options" and isinstance(value, dict):
            _check_option_kinds(value, path)
        values[name] = _check_value(name, value, f"--config {path}")
    return values


def _float_or_same(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def _check_option_kinds(options: dict, path) -> None:
    from cvkit.registry import KINDS

    for kind, opts in options.items():
        if kind not in KINDS:
            raise UsageError(f"--config {path}: unknown key 'options.{kind}' (options are grouped by "
                             f"{', '.join(KINDS)})")
        if not isinstance(opts, dict):
            raise UsageError(f"--config {path}: options.{kind} must be a mapping of option names to values")
        for key in opts:
            if not isinstance(key, str):
                raise UsageError(f"--config {path}: options.{kind}: option names are text, got {key!r}")


def make_config(file_values: dict | None = None, cli_values: dict | None = None) -> TrainConfig:
    """Defaults, then the file, then the command line (values that are None were not given), then
    the recipe's defaults for what is still unset (:func:`cvkit.recipes.apply_recipe`)."""
    from cvkit.recipes import apply_recipe

    merged: dict[str, Any] = {}
    for source, where in ((file_values or {}, "config"), (cli_values or {}, None)):
        for key, value in source.items():
            if value is None:
                continue
            if key == "options":
                for kind, opts in value.items():
                    merged.setdefault("options", {}).setdefault(kind, {}).update(opts)
                continue
            merged[key] = _check_value(key, value, where)
    return TrainConfig(**apply_recipe(merged, merged.get("options") or {}))


def write_config(config: TrainConfig, path) -> None:
    """``config.yaml`` of a run: ``cvkit train --config RUN/config.yaml`` repeats the run."""
    import yaml

    data = {k.replace("_", "-"): v for k, v in config.as_dict().items() if k not in ("out",)}
    Path(path).write_text(
        "# cvkit train options of this run; repeat it with: cvkit train --config THIS_FILE\n"
        + yaml.safe_dump(data, sort_keys=False))
