"""cvkit-tinymlp: an example cvkit plugin.

It registers, through cvkit's ``cvkit`` entry-point group:

* the model ``tiny-mlp``: a two-layer perceptron for 1x28x28 images (option ``hidden``);
* the transform ``tiny-aug``: small random rotations and shifts for training, none for evaluation;
* the loss ``smooth-ce``: cross-entropy with label smoothing, written out by hand;
* the optimizer ``tiny-adamw``: AdamW with a stronger default weight decay;
* the training callback ``tinymlp-log``: one line per epoch, ``EPOCH VAL_ACCURACY``, appended to a file;
* the command ``cvkit tinymlp-info``: the model's layers and parameter count.

This module imports no torch: cvkit imports every plugin on each run, even for ``cvkit --help``,
so torch (seconds to import) is imported inside the factories, which run only when the thing is used.
"""

import functools
from pathlib import Path

import cvkit
from cvkit.errors import UsageError

IN_CHANNELS, HEIGHT, WIDTH = 1, 28, 28


# ---------------------------------------------------------------------------------------------
# model: tiny-mlp


@functools.cache
def _tiny_mlp_class():
    """The nn.Module class, defined on first use so that importing this module imports no torch."""
    import torch
    from torch import nn

    class TinyMLP(nn.Module):
        """flatten -> fc1 (C*H*W -> hidden) -> ReLU -> fc2 (hidden -> num_classes)."""

        def __init__(self, num_classes: int, hidden: int = 64, in_features: int = IN_CHANNELS * HEIGHT * WIDTH):
            super().__init__()
            self.fc1 = nn.Linear(in_features, hidden)
            self.fc2 = nn.Linear(hidden, num_classes)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))

    return TinyMLP


def build_tiny_mlp(num_classes: int, weights: str | None = None, *, hidden: int = 64):
    """The model factory: ``build(num_classes, weights, **options) -> nn.Module``.

    ``weights``: None or ``"none"`` (random initialisation) or the path of a state dict or cvkit
    checkpoint. The option ``hidden`` (``--opt model.hidden=N``) is the width of the hidden layer.
    """
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise UsageError(f"--opt model.hidden={hidden!r}: model 'tiny-mlp' needs a positive integer")
    model = _tiny_mlp_class()(num_classes, hidden=hidden)
    if weights in (None, "", "none"):
        return model
    if weights == "imagenet":
        raise UsageError("--weights imagenet: model 'tiny-mlp' has no pretrained weights; "
                         "use --weights none or --weights PATH")
    from cvkit.checkpoint import load_weights_into

    # head="fc2": weights trained for another number of classes still load, with a fresh fc2.
    load_weights_into(model, weights, head="fc2")
    return model


@cvkit.hookimpl
def register_models(register):
    register("tiny-mlp", build_tiny_mlp, input_size=(IN_CHANNELS, HEIGHT, WIDTH), mean=(0.5,), std=(0.5,),
             default_transforms="plain",
             help="two-layer perceptron: 1x28x28 -> hidden (option hidden, default 64) -> classes")


# ---------------------------------------------------------------------------------------------
# transform: tiny-aug


class ToChannels:
    """Convert a PIL image to 1 (L) or 3 (RGB) channels. A module-level class, not a lambda, so
    DataLoader worker processes can pickle the transform."""

    def __init__(self, channels: int):
        if channels not in (1, 3):
            raise UsageError(f"transform 'tiny-aug' reads images as 1 or 3 channels, not {channels}")
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, img):
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self):
        return f"ToChannels(mode={self.mode!r})"


def build_tiny_aug(*, train: bool, input_size, mean, std, degrees: float = 10.0, translate: float = 0.1):
    """The transform factory: ``build(*, train, input_size, mean, std, **options)`` returns a callable
    PIL.Image -> Tensor[C, H, W]. Options: ``degrees`` and ``translate`` of the random affine."""
    from torchvision import transforms as T

    channels, height, width = input_size
    steps = [ToChannels(channels), T.Resize(min(height, width)), T.CenterCrop((height, width))]
    if train:
        steps.append(T.RandomAffine(degrees=float(degrees), translate=(float(translate), float(translate))))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


@cvkit.hookimpl
def register_transforms(register):
    register("tiny-aug", build_tiny_aug,
             help="Resize + CenterCrop, then (train only) RandomAffine (options degrees=10, translate=0.1)")


# ---------------------------------------------------------------------------------------------
# loss: smooth-ce


def build_smooth_ce(smoothing: float = 0.1):
    """The loss factory: ``build(**options)`` returns ``(logits[N, C], targets[N]) -> scalar``."""
    if not 0.0 <= float(smoothing) < 1.0:
        raise UsageError(f"--opt loss.smoothing={smoothing!r}: must be in [0, 1)")
    smoothing = float(smoothing)

    def smooth_ce(logits, targets):
        from torch.nn import functional as F

        log_probs = F.log_softmax(logits, dim=-1)
        nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        uniform = -log_probs.mean(dim=-1)  # cross-entropy against the uniform distribution
        return ((1.0 - smoothing) * nll + smoothing * uniform).mean()

    return smooth_ce


@cvkit.hookimpl
def register_losses(register):
    register("smooth-ce", build_smooth_ce, help="cross-entropy with label smoothing (option smoothing=0.1)")


# ---------------------------------------------------------------------------------------------
# optimizer: tiny-adamw


def build_tiny_adamw(params, *, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.999)):
    """The optimizer factory: ``build(params, *, lr, **options) -> torch.optim.Optimizer``."""
    from torch import optim

    return optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


@cvkit.hookimpl
def register_optimizers(register):
    register("tiny-adamw", build_tiny_adamw, help="optim.AdamW, weight decay 0.05 (options weight_decay, betas)")


# ---------------------------------------------------------------------------------------------
# callback: tinymlp-log


class EpochLog:
    """Appends ``EPOCH VAL_ACCURACY`` to a text file after every epoch (in rank 0 only).

    The file is ``path``, or ``RUN_DIR/tinymlp-log.txt``; a resumed run appends to it.
    """

    def __init__(self, path: str | None = None):
        self.path = path

    def on_epoch_end(self, run, metrics: dict) -> None:
        """Append the epoch's line; other processes of a distributed run write nothing."""
        if not run.info.is_main:
            return
        path = Path(self.path) if self.path else Path(run.run_dir) / "tinymlp-log.txt"
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{metrics['epoch']} {metrics['val_accuracy']:.4f}\n")


def build_tinymlp_log(path: str | None = None):
    """The callback factory: ``build(**options)`` returns an object with ``on_*`` methods."""
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise UsageError(f"--opt callback.tinymlp-log.path={path!r}: needs a file path")
    return EpochLog(path)


@cvkit.hookimpl
def register_callbacks(register):
    register("tinymlp-log", build_tinymlp_log,
             help="append 'EPOCH VAL_ACCURACY' to a file after each epoch (option path, default RUN_DIR/tinymlp-log.txt)")


# ---------------------------------------------------------------------------------------------
# command: cvkit tinymlp-info


def model_info(num_classes: int = 10, hidden: int = 64) -> dict:
    """Build tiny-mlp through cvkit's registry and describe it (imports torch: call it from a command)."""
    from cvkit.build import build_model, model_spec

    spec = model_spec("tiny-mlp")
    model = build_model("tiny-mlp", num_classes=num_classes, options={"hidden": hidden})
    layers = [{"name": name, "shape": list(p.shape), "count": p.numel()} for name, p in model.named_parameters()]
    return {
        "model": spec.name, "plugin": spec.plugin, "input_size": list(spec.input_size),
        "mean": list(spec.mean), "std": list(spec.std), "num_classes": num_classes, "hidden": hidden,
        "layers": layers, "parameters": sum(layer["count"] for layer in layers),
    }


@cvkit.hookimpl
def register_commands(app):
    import typer  # already imported by cvkit's command line: costs nothing

    @app.command("tinymlp-info", rich_help_panel="Plugins")
    def tinymlp_info(
        num_classes: int = typer.Option(10, min=1, help="Number of outputs of the model."),
        hidden: int = typer.Option(64, min=1, help="Width of the hidden layer (the model option hidden)."),
        json: bool = typer.Option(False, "--json", help="Print machine-readable JSON on stdout."),
    ):
        """Show tiny-mlp's registration, layers and parameter count (plugin cvkit-tinymlp)."""
        from cvkit import ui

        info = model_info(num_classes=num_classes, hidden=hidden)
        if json:
            ui.print_json(info)
            return
        ui.out.print(f"model {info['model']} (plugin {info['plugin']}): input "
                     f"{'x'.join(map(str, info['input_size']))}, mean {info['mean']}, std {info['std']}")
        for layer in info["layers"]:
            ui.out.print(f"  {layer['name']:<12} {'x'.join(map(str, layer['shape'])):>10}  {layer['count']:>8,}")
        ui.out.print(f"{info['parameters']:,} parameters (hidden={hidden}, num_classes={num_classes})")
