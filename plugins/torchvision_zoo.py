"""Built-in plugin: every torchvision classifier as ``NAME-finetune`` and ``NAME-frozen``.

NAME is spelt as torchvision spells it (``mobilenet_v3_small-frozen``, ``vit_b_16-finetune``). What
each needs is read from torchvision when the table is made, not when cvkit starts, so listing and
``--help`` import no torch: the input size, resize, interpolation and normalisation of the model's
default weights (``weights.transforms()``), and its classifier layer, found as the last layer with
1000 outputs (``fc``, ``classifier.3``, ``heads.head``, ...). ``torchvision_table.py`` holds it;
``python -m cvkit_plugins.torchvision_zoo`` writes it again for the installed torchvision, and a
test checks that it matches. resnet18 keeps its own plugin (``plugins/resnet.py``).
"""

from __future__ import annotations

import functools
import re

import cvkit
from cvkit_plugins.torchvision_table import TABLE

OWN_PLUGIN = {"resnet18"}  # registered by plugins/resnet.py, unchanged


def build(num_classes: int, weights: str | None = None, *, name: str, frozen: bool):
    from cvkit_plugins.zoo_build import build_torchvision

    return build_torchvision(name, num_classes, weights, frozen=frozen)


def _describe(name: str) -> dict:
    entry = TABLE[name]
    # head= promises forward(x) == head(rest(x)): only where the head is the last layer (not
    # squeezenet's, whose class-score convolution is followed by a ReLU and a pooling)
    return dict(input_size=(3, entry["crop"], entry["crop"]), mean=entry["mean"], std=entry["std"],
                resize=entry["resize"], interpolation=entry["interpolation"],
                head=entry["head"] if entry["head_is_last"] else None, family=entry["family"],
                default_transforms="chapter")


@cvkit.hookimpl
def register_models(register):
    for name, entry in TABLE.items():
        if name in OWN_PLUGIN:
            continue
        size = f"{entry['params'] / 1e6:.1f}M parameters, {entry['crop']}px"
        meta = _describe(name)
        register(f"{name}-finetune", functools.partial(build, name=name, frozen=False), **meta,
                 help=f"torchvision {name} ({size}) with a new head; every parameter trains")
        register(f"{name}-frozen", functools.partial(build, name=name, frozen=True), **meta,
                 unfrozen=f"{name}-finetune",
                 help=f"torchvision {name} ({size}) with a new head; only the head trains")


def make_table() -> dict:
    """The table, read from the installed torchvision (imports torch; builds each model on the
    meta device, or the smallest of its family on the CPU where that fails)."""
    import torch
    from torchvision import models

    table, heads = {}, {}
    for name in models.list_models(module=models):
        weights = models.get_model_weights(name).DEFAULT
        preset = weights.transforms()
        family = family_of(name)
        head, last = _head_of(name, torch, models) or (None, None)
        if head:
            heads.setdefault(family, (head, last))
        table[name] = {"family": family, "crop": int(preset.crop_size[0]), "resize": int(preset.resize_size[0]),
                       "interpolation": preset.interpolation.value, "mean": tuple(preset.mean),
                       "std": tuple(preset.std), "head": head, "head_is_last": last, "weights": weights.name,
                       "params": int(weights.meta["num_params"])}
    for name, entry in sorted(table.items(), key=lambda item: item[1]["params"]):
        if entry["family"] not in heads:  # no member builds on the meta device: the smallest on the CPU
            heads[entry["family"]] = _head_of(name, torch, models, device="cpu")
        if not entry["head"]:
            entry["head"], entry["head_is_last"] = heads[entry["family"]]
    return table


def family_of(name: str) -> str:
    """The family a name starts with, itself a prefix of every name in it: ``vit``, ``swin_v2``,
    ``mobilenet_v3``, ``efficientnet_v2``, ``wide_resnet``, ``resnet``, ``convnext``, ..."""
    return re.match(r"[a-z]+(_v\d|_resnet)?", name).group()


def _head_of(name: str, torch, models, device: str = "meta") -> tuple | None:
    """(the head's path, whether it is the model's last layer), or None where it cannot be built."""
    try:
        with torch.device(device):
            model = models.get_model(name, weights=None)
    except Exception:  # noqa: BLE001 - some builders compute on tensors (regnet): use the family's
        return None
    head, last = None, None
    for path, module in model.named_modules():
        outputs = getattr(module, "out_features", None) or getattr(module, "out_channels", None)
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and outputs == 1000:
            head = path
        if not list(module.children()):
            last = path
    return head, head == last


if __name__ == "__main__":
    import warnings

    import torchvision

    from cvkit_plugins.tables import write_table

    warnings.filterwarnings("ignore", category=FutureWarning)  # googlenet/inception init notices
    write_table("torchvision_table.py", library="torchvision", version=torchvision.__version__,
                table=make_table(), what="classifiers")
