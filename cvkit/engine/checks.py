"""Why a run cannot learn as configured: one line each, said before training and kept in the summary."""

from __future__ import annotations

from cvkit.accel import frozen_head
from cvkit.build import ModelSpec
from cvkit.config import TrainConfig
from cvkit.plugins import Plugins


def model_warnings(config: TrainConfig, spec: ModelSpec, model, plugins: Plugins) -> list[str]:
    """Why this model, as built, cannot learn; one line each (empty when nothing is wrong).

    Clear-cut only: a frozen backbone (most parameters frozen, or everything but the registered
    head) left at random initialisation by ``--weights none``: it computes random features that
    training never changes, so only the head learns (seen: 25% accuracy on 4 classes).
    """
    if config.weights is None or config.weights.strip().lower() not in ("none", ""):
        return []  # None (the model's default), imagenet or a file: the frozen part holds learnt weights
    params = list(model.parameters())
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    head = frozen_head(model, spec.head)
    if not frozen or (head is None and frozen < trainable):
        return []
    trains = f"only {head} trains" if head else f"only {trainable:,} of {frozen + trainable:,} parameters train"
    entry = plugins["models"].get(config.model)
    other = entry.meta.get("unfrozen")  # the same model with a backbone that trains, if the plugin names one
    return [f"{config.model} with --weights none: the backbone is frozen at random weights and cannot learn; "
            f"{trains}. Use --weights imagenet or a weights file"
            + (f", or {other}" if other else ", or a model whose backbone trains")]


def data_warnings(splits) -> list[str]:
    """Why this data cannot train or measure a classifier; one line each. Clear-cut only: a single
    class; classes without training images (they cannot be learnt); classes without validation
    images (val accuracy, which picks best.pt, does not measure them). Counted from the datasets'
    ``targets`` where they list them (no image is read)."""
    from cvkit.datacheck import single_class_message

    classes = list(splits.classes)
    if len(classes) == 1:
        return [single_class_message(classes[0])]
    found = []
    for split, text in (("train", "no training images: the model cannot learn {}"),
                        ("val", "no validation images: val accuracy (which picks best.pt) does not measure {}")):
        counts = _class_counts(getattr(splits, split), len(classes))
        missing = [classes[i] for i, n in enumerate(counts or []) if n == 0]
        if missing:
            one = len(missing) == 1
            names = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            found.append(f"{len(missing)} of {len(classes)} classes ({names}) {'has' if one else 'have'} "
                         + text.format("it" if one else "them"))
    return found


def _class_counts(dataset, num_classes: int) -> list[int] | None:
    """Images per class of an ImageFolder-like dataset or a Subset of one; None when it does not
    list its targets."""
    from cvkit.data import labels_of

    labels = labels_of(dataset)
    if labels is None:
        return None
    counts = [0] * num_classes
    for label in labels:
        if 0 <= label < num_classes:
            counts[label] += 1
    return counts
