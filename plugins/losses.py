"""Built-in plugin: the chapter's losses."""

import cvkit


def build_cross_entropy(label_smoothing: float = 0.0, weight=None):
    """``weight``: one per class (``--balance loss``). Targets may be class indices or, with
    ``--mixup`` / ``--cutmix``, class probabilities."""
    from torch import nn

    return nn.CrossEntropyLoss(label_smoothing=label_smoothing, weight=weight)


def build_label_smoothing(smoothing: float = 0.1, weight=None):
    from torch import nn

    return nn.CrossEntropyLoss(label_smoothing=smoothing, weight=weight)


def build_mse():
    from torch.nn import functional as F

    def mse_one_hot(logits, targets):
        if targets.is_floating_point():  # class probabilities (--mixup / --cutmix)
            return F.mse_loss(logits, targets.to(logits.dtype))
        return F.mse_loss(logits, F.one_hot(targets, logits.shape[-1]).to(logits.dtype))

    return mse_one_hot


@cvkit.hookimpl
def register_losses(register):
    register("cross-entropy", build_cross_entropy, help="nn.CrossEntropyLoss on logits and class indices")
    register("mse", build_mse, help="the chapter's nn.MSELoss, between the logits and one-hot targets")
    register("label-smoothing", build_label_smoothing,
             help="cross-entropy with label smoothing (option smoothing, default 0.1)")
