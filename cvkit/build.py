"""Build registered things by name: the one place commands turn names into objects.

Each function looks the name up in the plugins' registries (a clear error for unknown or conflicting
names) and calls the factory with the contract's arguments plus the user's ``--opt`` options.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvkit.plugins import Plugins, get_plugins
from cvkit.registry import Entry


@dataclass(frozen=True)
class ModelSpec:
    """A model's registration: what input it takes and how that input is normalised."""

    name: str
    plugin: str
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_transforms: str | None
    help: str
    head: str | None = None  # the final classifier layer (a dotted path: fc, classifier.3), when named
    resize: int | None = None  # the eval transform's Resize before the crop (None: 256/224 of the input)
    interpolation: str = "bilinear"  # of the resizes: bilinear, bicubic, nearest

    @classmethod
    def from_entry(cls, entry: Entry) -> "ModelSpec":
        return cls(
            name=entry.name, plugin=entry.plugin, input_size=entry.meta["input_size"],
            mean=entry.meta["mean"], std=entry.meta["std"],
            default_transforms=entry.meta.get("default_transforms"), help=entry.help,
            head=entry.meta.get("head"), resize=entry.meta.get("resize"),
            interpolation=entry.meta.get("interpolation") or "bilinear",
        )


def model_spec(name: str, plugins: Plugins | None = None) -> ModelSpec:
    plugins = plugins or get_plugins()
    return ModelSpec.from_entry(plugins["models"].get(name, option="--model"))


def build_model(name: str, *, num_classes: int, weights: str | None = None,
                options: dict | None = None, plugins: Plugins | None = None):
    """The model called ``name`` with ``num_classes`` outputs; ``weights`` as its plugin reads it."""
    plugins = plugins or get_plugins()
    entry = plugins["models"].get(name, option="--model")
    if weights not in (None, "", "none", "imagenet"):
        _check_weights_model(weights, name)
    return entry.create(num_classes=num_classes, weights=weights, options=options)


def _check_weights_model(path: str, name: str) -> None:
    """A cvkit checkpoint (or a .safetensors file cvkit wrote) names its model: weights of another
    model are refused by name."""
    import json
    from pathlib import Path

    from cvkit.checkpoint import is_checkpoint, load_file, load_safetensors
    from cvkit.errors import CheckpointError

    if Path(path).suffix == ".safetensors":
        saved = load_safetensors(path, option="--weights", tensors=False)[1].get("model")
        try:  # cvkit writes JSON strings; another tool may write the bare name
            saved = json.loads(saved) if saved is not None else None
        except ValueError:
            pass
    else:
        obj = load_file(path, option="--weights")
        saved = (obj.get("model") or {}).get("name") if is_checkpoint(obj) else None
    if saved is not None and saved != name:
        raise CheckpointError(f"--weights {path}: a checkpoint of model {saved!r}, not {name!r}")


def build_transform(spec: ModelSpec, name: str | None = None, *, train: bool,
                    options: dict | None = None, plugins: Plugins | None = None):
    """The transform ``name`` (default: the model's own default, else ``plain``) sized for ``spec``;
    ``resize`` and ``interpolation`` go to factories that take them."""
    import inspect

    plugins = plugins or get_plugins()
    entry = plugins["transforms"].get(name or spec.default_transforms or "plain", option="--transforms")
    takes = inspect.signature(entry.build).parameters
    hints = {k: v for k, v in (("resize", spec.resize), ("interpolation", spec.interpolation)) if k in takes}
    return entry.create(train=train, input_size=spec.input_size, mean=spec.mean, std=spec.std,
                        options=options, **hints)


def build_loss(name: str, *, options: dict | None = None, class_weights=None, plugins: Plugins | None = None):
    """The loss ``name``; ``class_weights`` (a tensor, ``--balance loss``) go to its factory's
    ``weight`` keyword, which a loss must take to be weighted."""
    plugins = plugins or get_plugins()
    entry = plugins["losses"].get(name, option="--loss")
    if class_weights is None:
        return entry.create(options=options)
    import inspect

    from cvkit.errors import UsageError

    if "weight" not in inspect.signature(entry.build).parameters:
        raise UsageError(f"--balance loss: loss {name!r} takes no class weights (its factory has no 'weight' "
                         f"keyword); use --balance sampler")
    return entry.create(options=options, weight=class_weights)


def build_optimizer(name: str, params, *, lr: float, options: dict | None = None,
                    plugins: Plugins | None = None):
    plugins = plugins or get_plugins()
    return plugins["optimizers"].get(name, option="--optimizer").create(params, lr=lr, options=options)


def build_scheduler(name: str, optimizer, *, epochs: int, steps_per_epoch: int = 1,
                    warmup_epochs: float | None = None, options: dict | None = None,
                    plugins: Plugins | None = None):
    """The scheduler ``name`` (or None). ``steps_per_epoch`` (optimizer steps) goes to factories that
    take it; ``warmup_epochs`` (when not 0) to those that take it, and is a usage error for the
    others. See :func:`scheduler_interval` for when it steps."""
    import inspect

    from cvkit.errors import UsageError

    plugins = plugins or get_plugins()
    entry = plugins["schedulers"].get(name, option="--scheduler")
    takes = inspect.signature(entry.build).parameters
    hints = {"steps_per_epoch": steps_per_epoch} if "steps_per_epoch" in takes else {}
    if warmup_epochs:
        if "warmup_epochs" not in takes:
            raise UsageError(f"--warmup-epochs {warmup_epochs:g}: scheduler {name!r} has no warm-up "
                             f"(cosine and onecycle have; or --warmup-epochs 0)")
        hints["warmup_epochs"] = warmup_epochs
    return entry.create(optimizer, epochs=epochs, options=options, **hints)


def scheduler_interval(name: str, plugins: Plugins | None = None) -> str:
    """``"step"`` for a scheduler registered with ``interval="step"`` (stepped after every optimizer
    step), else ``"epoch"`` (stepped after each epoch's training)."""
    from cvkit.errors import PluginError

    plugins = plugins or get_plugins()
    entry = plugins["schedulers"].get(name, option="--scheduler")
    interval = entry.meta.get("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise PluginError(f"--scheduler {name}: plugin {entry.plugin!r} registered interval={interval!r} "
                          f"(expected 'epoch' or 'step')")
    return interval


def build_dataset(name: str, root: str, *, split: str, transform, options: dict | None = None,
                  min_side: int | None = None, plugins: Plugins | None = None):
    """The dataset ``name``; ``min_side`` (see :func:`decode_min_side`) goes to factories that
    take a ``min_side`` keyword, so they may decode large images at a reduced scale."""
    import inspect

    plugins = plugins or get_plugins()
    entry = plugins["datasets"].get(name, option="--dataset")
    hints = {}
    if min_side and "min_side" in inspect.signature(entry.build).parameters:
        hints["min_side"] = min_side
    return entry.create(root, split=split, transform=transform, options=options, **hints)


DEFAULT_SPLITS = ("train", "val")


def dataset_splits(name: str, root: str, *, options: dict | None = None, plugins: Plugins | None = None) -> tuple:
    """The splits the data at ``root`` holds in format ``name``: the format's ``splits`` metadata, a
    tuple or a callable ``splits(root, **options)`` (default ``("train", "val")``)."""
    plugins = plugins or get_plugins()
    entry = plugins["datasets"].get(name, option="--dataset")
    splits = entry.meta.get("splits", DEFAULT_SPLITS)
    if callable(splits):
        from cvkit.registry import Entry

        looker = Entry(kind=entry.kind, name=entry.name, build=splits, plugin=entry.plugin, help=entry.help)
        splits = looker.create(str(root), options=options)
    return tuple(splits or ())


def decode_min_side(spec: ModelSpec) -> int:
    """The shorter image side the built-in transforms need at least: the eval Resize (the model's
    ``resize``, else 256/224 of the input size); the RandomResizedCrop output is the input size."""
    if spec.resize:
        return max(spec.resize, *spec.input_size[1:])
    return round(max(spec.input_size[1:]) * 256 / 224)
