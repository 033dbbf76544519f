"""Building a torchvision classifier for cvkit (imports torch: load it from a factory only).

- ``weights``: ``imagenet`` (the default weights of the table, downloaded once), ``none`` (the
  family's own initialisation; resnets with ``zero_init_residual``, so that short runs from scratch
  learn), or a file (state dict or cvkit checkpoint; a head of another class count starts fresh).
- The head found in the table is replaced by one for ``num_classes``.
- inception_v3 and googlenet: their auxiliary classifiers are left out (torchvision's ImageNet
  weights come with them; cvkit trains on the main logits only, so a forward pass in training mode
  returns plain logits like every other model).
- Frozen: only the head's parameters train, and ``train()`` leaves every other module in eval mode
  (BatchNorm statistics and dropout of the backbone never change).
"""

from __future__ import annotations

from torch import nn

from cvkit.accel import set_layer
from cvkit_plugins.torchvision_table import TABLE

RESNETS = ("resnet", "resnext", "wide_resnet")


class FrozenBackbone:
    """Mixin of a model whose backbone is frozen: ``train(mode)`` sets only the modules of
    ``head_paths`` to ``mode``, every other module stays in eval mode."""

    head_paths: tuple = ()

    def train(self, mode: bool = True):
        super().train(False)
        self.training = mode
        for path in self.head_paths:
            self.get_submodule(path).train(mode)
        return self


_FROZEN_CLASSES: dict = {}


def freeze_backbone(model: nn.Module, head) -> nn.Module:
    """``model`` with every parameter outside ``head`` (a path, or several: a distilled model's
    two classifiers) frozen and its backbone kept in eval mode."""
    cls = type(model)
    if cls not in _FROZEN_CLASSES:
        _FROZEN_CLASSES[cls] = type(f"Frozen{cls.__name__}", (FrozenBackbone, cls), {})
    model.__class__ = _FROZEN_CLASSES[cls]
    model.head_paths = (head,) if isinstance(head, str) else tuple(head)
    prefixes = tuple(path + "." for path in model.head_paths)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(prefixes)
    return model.train(model.training)


def new_head(old: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes)
    if isinstance(old, nn.Conv2d):  # squeezenet: a 1x1 convolution gives the class scores
        return nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    raise TypeError(f"cannot replace a head of type {type(old).__name__}")


def _options(name: str, family: str, pretrained: bool, crop: int) -> dict:
    """The builder's keywords: the family's sound initialisation from scratch; for ImageNet weights,
    the layout they were saved with."""
    if pretrained:  # inception's and googlenet's weights hold the auxiliary heads (dropped later)
        return {"aux_logits": True, "init_weights": False} if family in ("inception_v3", "googlenet") else {}
    if name.startswith(RESNETS):
        return {"zero_init_residual": True}
    if family in ("inception_v3", "googlenet"):
        return {"aux_logits": False, "init_weights": True}
    if family == "vit":
        return {"image_size": crop}  # vit_h_14's weights are for 518 pixels, its builder's default 224
    return {}


def _drop_aux(model: nn.Module) -> None:
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attr in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, attr):
                setattr(model, attr, None)


def build_torchvision(name: str, num_classes: int, weights: str | None, *, frozen: bool) -> nn.Module:
    from torchvision import models

    from cvkit.checkpoint import load_weights_into
    from cvkit_plugins.hub import imagenet_state_dict

    entry = TABLE[name]
    weights = "imagenet" if weights is None else str(weights)
    pretrained = weights == "imagenet"
    model = models.get_model(name, weights=None, **_options(name, entry["family"], pretrained, entry["crop"]))
    if pretrained:
        enum = models.get_model_weights(name)[entry["weights"]]
        model.load_state_dict(imagenet_state_dict(enum, name))
        if entry["family"] in ("inception_v3", "googlenet"):
            model.transform_input = True  # as torchvision sets it for these weights
    _drop_aux(model)
    head = entry["head"]
    set_layer(model, head, new_head(model.get_submodule(head), num_classes))
    if weights not in ("imagenet", "none", ""):
        load_weights_into(model, weights, head=head)
    return freeze_backbone(model, head) if frozen else model


def build_timm(name: str, num_classes: int, weights: str | None, *, frozen: bool) -> nn.Module:
    """A timm model with a head for ``num_classes`` (timm makes it); ``weights`` as for torchvision's."""
    from cvkit.checkpoint import load_weights_into
    from cvkit.errors import CheckpointError, UsageError

    try:
        import timm
    except ImportError:
        raise UsageError(f"model timm/{name} needs timm: pip install \"cvkit[timm]\"") from None
    weights = "imagenet" if weights is None else str(weights)
    pretrained = weights == "imagenet"
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    except Exception as exc:  # noqa: BLE001 - hub and network errors come in many types
        if not pretrained:
            raise
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"--weights imagenet: cannot get timm {name}'s pretrained weights "
                              f"({type(exc).__name__}: {reason}); offline, use --weights none (random "
                              f"initialisation) or --weights PATH (a local state dict or cvkit checkpoint)") from None
    heads = model.pretrained_cfg.get("classifier") or "head"
    if weights not in ("imagenet", "none", ""):
        load_weights_into(model, weights, head=heads if isinstance(heads, str) else heads[0])
    return freeze_backbone(model, heads) if frozen else model
