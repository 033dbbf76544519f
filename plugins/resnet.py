"""Built-in plugin: torchvision resnet18, fine-tuned whole or with a frozen backbone.

``weights``: ``imagenet`` (torchvision's IMAGENET1K_V1, downloaded once into torch's cache),
``none`` (random initialisation) or a path to a state dict or cvkit checkpoint (the old ``fc`` is
dropped when its class count differs).
"""

import cvkit
from cvkit.errors import CheckpointError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _HubMessages:
    """torch.hub's output on its way to stderr, without its ``Downloading: "URL" to PATH`` line:
    offline, cvkit's error is then the only line; a download in progress still shows its bar."""

    def __init__(self, target):
        self.target, self.downloaded = target, False

    def write(self, text: str) -> int:
        if text.startswith("Downloading: "):
            self.downloaded = True
            return len(text)
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()


def _imagenet_state_dict():
    import contextlib
    import sys

    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    hub = _HubMessages(sys.stderr)
    try:
        # stdout stays for results (--json) only
        with contextlib.redirect_stdout(hub), contextlib.redirect_stderr(hub):
            state = weights.get_state_dict(progress=True, check_hash=True)
        if hub.downloaded:
            from cvkit import ui

            ui.err.print(f"cvkit: downloaded resnet18's ImageNet weights ({weights.url}) into torch's cache",
                         markup=False, highlight=False, soft_wrap=True)
        return state
    except (OSError, RuntimeError) as exc:  # URLError, socket errors, hash mismatch
        raise CheckpointError(
            f"--weights imagenet: cannot download resnet18's ImageNet weights from {weights.url} "
            f"({type(exc).__name__}: {exc}); offline, use --weights none (random initialisation) "
            f"or --weights PATH (a local state dict or cvkit checkpoint)") from None


def _build(num_classes: int, weights: str | None, frozen: bool):
    from torch import nn

    from cvkit.checkpoint import load_weights_into
    from cvkit_plugins.resnet_models import FrozenBackboneResNet18, ResNet18

    model = FrozenBackboneResNet18() if frozen else ResNet18()
    weights = "imagenet" if weights is None else weights
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


def build_finetune(num_classes: int, weights: str | None = "imagenet"):
    return _build(num_classes, weights, frozen=False)


def build_frozen(num_classes: int, weights: str | None = "imagenet"):
    return _build(num_classes, weights, frozen=True)


@cvkit.hookimpl
def register_models(register):
    # head="fc": forward(x) == fc(the rest of the net with fc replaced by Identity), so cvkit may
    # cache the frozen backbone's features when the training transform is deterministic
    common = dict(input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  default_transforms="chapter", head="fc")
    register("resnet18-finetune", build_finetune, **common,
             help="torchvision resnet18 with a new fc; every parameter trains")
    # unfrozen: the model to name when this one cannot learn (--weights none leaves the frozen
    # backbone at random weights; see cvkit.engine.checks.model_warnings)
    register("resnet18-frozen", build_frozen, **common, unfrozen="resnet18-finetune",
             help="torchvision resnet18 with a new fc; only fc trains, the backbone stays frozen in eval mode")
