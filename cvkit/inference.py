"""A trained model rebuilt for inference (``cvkit eval``, ``cvkit predict``) from its checkpoint."""

from __future__ import annotations

from cvkit.accel import for_inference
from cvkit.build import ModelSpec, build_model, build_transform
from cvkit.checkpoint import find_checkpoint, load_checkpoint, load_model_state
from cvkit.errors import CheckpointError, PluginError, UsageError
from cvkit.plugins import get_plugins


def restore_model(path=None, *, device=None, option: str = "--checkpoint", plugins=None):
    """Rebuild the model a cvkit checkpoint describes, with its weights and its eval transform.

    ``path`` is as for :func:`find_checkpoint`. Returns ``(model, checkpoint, spec, transform,
    path)``; the model is in eval mode on ``device``, for inference only: each BatchNorm is folded
    into the convolution before it (exact in eval mode; see :func:`cvkit.accel.for_inference`), so
    its modules and state dict keys may differ from the model's. The input size and normalisation
    come from the checkpoint itself, not today's registration.
    """
    plugins = plugins or get_plugins()
    path = find_checkpoint(path, option=option)
    ckpt = load_checkpoint(path, option=option)
    info = ckpt["model"]
    if info["name"] not in plugins["models"]:
        raise PluginError(f"{option} {path}: model {info['name']!r} (from plugin {info.get('plugin')!r}) "
                          f"is not installed; install the plugin that provides it (see `cvkit list models`)")
    spec = ModelSpec(name=info["name"], plugin=info.get("plugin", "?"), input_size=tuple(info["input_size"]),
                     mean=tuple(info["mean"]), std=tuple(info["std"]),
                     default_transforms=info.get("default_transforms"), help="", resize=info.get("resize"),
                     interpolation=info.get("interpolation") or "bilinear")
    options = (ckpt.get("config") or {}).get("options") or {}
    model = build_model(spec.name, num_classes=len(ckpt["classes"]), weights="none",
                        options=options.get("model"), plugins=plugins)
    try:
        load_model_state(model, ckpt["model_state"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{option} {path}: weights do not fit model {spec.name!r} "
                              f"({first[1].strip() if len(first) > 1 else first[0]})") from None
    try:
        transform = build_transform(spec, ckpt["transform"]["name"], train=False,
                                    options=options.get("transform"), plugins=plugins)
    except UsageError as exc:
        raise PluginError(f"{option} {path}: its transforms are not available ({exc})") from None
    if device is not None:
        model.to(device)
    return for_inference(model), ckpt, spec, transform, path
