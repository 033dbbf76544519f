"""Built-in plugin: torchvision resnet18, fine-tuned whole or with a frozen backbone.

``weights``: ``imagenet`` (torchvision's IMAGENET1K_V1, downloaded once into torch's cache),
``none`` (random initialisation) or a path to a state dict or cvkit checkpoint (the old ``fc`` is
dropped when its class count differs).
"""

import cvkit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _imagenet_state_dict():
    from torchvision.models import ResNet18_Weights

    from cvkit_plugins.hub import imagenet_state_dict

    return imagenet_state_dict(ResNet18_Weights.IMAGENET1K_V1, "resnet18")


def _build(num_classes: int, weights: str | None, frozen: bool, zero_init_residual: bool | None = None):
    from torch import nn

    from cvkit.checkpoint import load_weights_into
    from cvkit_plugins.resnet_models import FrozenBackboneResNet18, ResNet18

    weights = "imagenet" if weights is None else weights
    if zero_init_residual is None:  # from scratch: zero-init residual, as the zoo's resnets and timm's
        zero_init_residual = weights in ("none", "")
    model = FrozenBackboneResNet18(bool(zero_init_residual)) if frozen else ResNet18(bool(zero_init_residual))
    if weights == "imagenet":
        model.load_state_dict(_imagenet_state_dict())
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    if weights not in ("imagenet", "none", ""):
        load_weights_into(model, weights, head="fc")
    if frozen:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("fc.")
        model.train(model.training)  # re-apply: the backbone stays in eval mode
    return model


def build_finetune(num_classes: int, weights: str | None = "imagenet", zero_init_residual: bool | None = None):
    """``zero_init_residual`` (default: with ``--weights none``): each block's last BatchNorm starts at
    0; ``--opt model.zero_init_residual=false`` keeps torchvision's plain initialisation."""
    return _build(num_classes, weights, frozen=False, zero_init_residual=zero_init_residual)


def build_frozen(num_classes: int, weights: str | None = "imagenet", zero_init_residual: bool | None = None):
    return _build(num_classes, weights, frozen=True, zero_init_residual=zero_init_residual)


@cvkit.hookimpl
def register_models(register):
    # head="fc": forward(x) == fc(the rest of the net with fc replaced by Identity), so cvkit may
    # cache the frozen backbone's features when the training transform is deterministic
    common = dict(input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  default_transforms="chapter", head="fc", family="resnet")
    register("resnet18-finetune", build_finetune, **common,
             help="torchvision resnet18 with a new fc; every parameter trains")
    # unfrozen: the model to name when this one cannot learn (--weights none leaves the frozen
    # backbone at random weights; see cvkit.engine.checks.model_warnings)
    register("resnet18-frozen", build_frozen, **common, unfrozen="resnet18-finetune",
             help="torchvision resnet18 with a new fc; only fc trains, the backbone stays frozen in eval mode")
