"""What every export carries: the model's description, as JSON strings by key.

An exported model (ONNX ``metadata_props``, the ``cvkit.json`` extra file of TorchScript and
``pt2`` archives, a ``.safetensors`` header's ``__metadata__``) holds the same map:

=================  ==========================================================================
``classes``        the class names, in label order (output ``i`` is ``classes[i]``)
``input_size``     ``[C, H, W]`` of the model's input
``mean``, ``std``  per channel: the input is ``(pixel / 255 - mean) / std``
``resize``         the eval transform's Resize: the shorter side (an int), or ``[H, W]``;
                   ``null`` when there is none
``crop``           the eval transform's CenterCrop ``[H, W]``; ``null`` when there is none
``interpolation``  of the resize: ``bilinear``, ``bicubic``, ``nearest``, ...
``model``          the cvkit model name it was trained as
``transform``      the name of the cvkit eval transform
``cvkit_version``  the cvkit that wrote it
``cvkit_model``    what cvkit needs to rebuild the model (its registration, the run's options)
``quantization``   ``"int8"`` for an int8 ONNX file (``--quantize int8``); absent otherwise
=================  ==========================================================================

Every value is a JSON string (``json.loads`` each). This module imports neither torch nor numpy:
predicting from ONNX reads it without torch.
"""

from __future__ import annotations

import json

from cvkit.errors import CheckpointError

REQUIRED = ("classes", "input_size", "mean", "std", "resize", "crop", "interpolation", "model")
KEYS = REQUIRED + ("transform", "cvkit_version", "cvkit_model", "quantization")


def describe(ckpt: dict, transform) -> dict:
    """The description of a cvkit checkpoint (as :func:`cvkit.checkpoint.make_checkpoint` writes
    it) whose eval transform is ``transform``: plain JSON values by key."""
    from cvkit import __version__

    info = ckpt["model"]
    steps = eval_steps(transform)
    config = ckpt.get("config") or {}
    rebuild = {"model": info, "transform": {k: v for k, v in ckpt["transform"].items() if k != "repr"},
               "config": {k: config.get(k) for k in ("options", "loss", "dataset") if k in config}}
    return {"classes": list(ckpt["classes"]), "input_size": list(info["input_size"]),
            "mean": list(info["mean"]), "std": list(info["std"]), **steps,
            "model": info["name"], "transform": ckpt["transform"]["name"], "cvkit_version": __version__,
            "cvkit_model": rebuild}


def eval_steps(transform) -> dict:
    """``resize``, ``crop`` and ``interpolation`` of an eval transform made of torchvision's
    ``Resize``/``CenterCrop``/``ToTensor``/``Normalize`` (and a channel conversion); ``None`` for a
    step it does not have. A step of another kind is an error naming it: its preprocessing could
    not be written down for a program without cvkit."""
    from torchvision import transforms as T

    found = {"resize": None, "crop": None, "interpolation": "bilinear"}
    for step in getattr(transform, "transforms", [transform]):
        if isinstance(step, T.Resize):
            size = step.size
            found["resize"] = size if isinstance(size, int) else (size[0] if len(size) == 1 else list(size))
            found["interpolation"] = step.interpolation.value
        elif isinstance(step, T.CenterCrop):
            found["crop"] = list(step.size)
        elif isinstance(step, (T.ToTensor, T.Normalize, T.Grayscale)) or type(step).__name__ == "ToChannels":
            continue
        else:
            raise CheckpointError(f"its eval transform has a step an export cannot describe ({step!r}); "
                                  f"only Resize, CenterCrop, ToTensor and Normalize are")
    return found


def to_strings(meta: dict) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in meta.items()}


def from_strings(props: dict[str, str], *, where: str) -> dict:
    """The description read back; an error naming ``where`` and the missing keys when it is not
    cvkit's (e.g. an ONNX file exported by another tool)."""
    missing = [k for k in REQUIRED if k not in props]
    if missing:
        raise CheckpointError(f"{where}: not exported by cvkit (no {', '.join(missing)} in its metadata); "
                              f"export it with `cvkit export`, or add the keys (classes: a JSON list of the "
                              f"class names in output order), see docs/export.md")
    try:
        return {k: json.loads(props[k]) for k in KEYS if k in props}
    except ValueError as exc:
        raise CheckpointError(f"{where}: its metadata is not valid JSON ({exc})") from None
