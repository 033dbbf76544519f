"""A trained model rebuilt for inference (``cvkit eval``, ``cvkit predict``) from its checkpoint."""

from __future__ import annotations

import functools
import math

from cvkit.accel import for_inference
from cvkit.build import ModelSpec, build_model, build_transform
from cvkit.checkpoint import find_checkpoint, load_checkpoint, load_model_state
from cvkit.errors import CheckpointError, PluginError, UsageError
from cvkit.onnxrun import TTA_VIEWS, check_views, is_onnx
from cvkit.plugins import get_plugins


def restore_model(path=None, *, device=None, option: str = "--checkpoint", plugins=None, fuse: bool = True):
    """Rebuild the model a cvkit checkpoint describes, with its weights and its eval transform.

    ``path`` is as for :func:`find_checkpoint`. Returns ``(model, checkpoint, spec, transform,
    path)``; the model is in eval mode on ``device``, for inference only: each BatchNorm is folded
    into the convolution before it (exact in eval mode; see :func:`cvkit.accel.for_inference`), so
    its modules and state dict keys may differ from the model's. The input size and normalisation
    come from the checkpoint itself, not today's registration. ``fuse=False``: the model as built,
    in eval mode, its modules and keys those of the checkpoint (what ``cvkit export`` writes).
    ``path`` may also be a ``.safetensors`` or ``.onnx`` file ``cvkit export`` wrote; an ``.onnx``
    model runs in onnxruntime behind a torch module (CPU, float32).
    """
    plugins = plugins or get_plugins()
    path = find_checkpoint(path, option=option)
    if is_onnx(path):
        return _restore_onnx(path, option, plugins)
    ckpt = load_checkpoint(path, option=option)
    info = ckpt["model"]
    if info["name"] not in plugins["models"]:
        raise PluginError(f"{option} {path}: model {info['name']!r} (from plugin {info.get('plugin')!r}) "
                          f"is not installed; install the plugin that provides it (see `cvkit list models`)")
    spec = saved_spec(info)
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
    return (for_inference(model) if fuse else model.eval()), ckpt, spec, transform, path


def _restore_onnx(path, option, plugins):
    from cvkit.checkpoint import as_checkpoint
    from cvkit.onnxrun import OnnxModel, as_torch_module

    model = OnnxModel(path, option=option)
    ckpt = as_checkpoint(model.meta)
    info = ckpt["model"]
    spec = saved_spec(info)
    try:
        transform = build_transform(spec, ckpt["transform"]["name"], train=False, plugins=plugins)
    except UsageError as exc:
        raise PluginError(f"{option} {path}: its transforms are not available ({exc})") from None
    return as_torch_module(model), ckpt, spec, transform, path


def saved_spec(info: dict) -> ModelSpec:
    """The model's registration as a checkpoint or export recorded it."""
    return ModelSpec(name=info["name"], plugin=info.get("plugin", "?"), input_size=tuple(info["input_size"]),
                     mean=tuple(info["mean"]), std=tuple(info["std"]), default_transforms=info.get("default_transforms"),
                     help="", resize=info.get("resize"), interpolation=info.get("interpolation") or "bilinear")


# The torch side of test-time augmentation: one function per view cvkit.onnxrun.TTA_VIEWS names,
# on an N x C x H x W tensor batch (the numpy side is cvkit.onnxrun.NUMPY_VIEWS).
TORCH_VIEWS = {"identity": lambda x: x, "hflip": lambda x: x.flip(-1)}


def with_tta(model, views=TTA_VIEWS):
    """``model`` behind a module that runs it on each of ``views`` of a batch and returns the log of
    the mean of their softmax probabilities (float32). As logits these give back the averaged
    probabilities (softmax), the averaged prediction (argmax) and, under cross-entropy, the NLL
    of the averaged probabilities; the device and autocast are the caller's, as for ``model``."""
    return _tta_module()(model, check_views(views, TORCH_VIEWS)).eval()


@functools.cache
def _tta_module():
    import torch

    class TTAModule(torch.nn.Module):
        def __init__(self, model, views: tuple[str, ...]):
            super().__init__()
            self.model, self.views = model, views

        def forward(self, x):
            logp = torch.stack([torch.log_softmax(self.model(TORCH_VIEWS[v](x)).float(), dim=-1)
                                for v in self.views])
            return torch.logsumexp(logp, dim=0) - math.log(len(self.views))

    return TTAModule
