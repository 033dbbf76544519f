"""`cvkit preview`: a picture of one augmented training batch, as the model will see it."""

from __future__ import annotations

from pathlib import Path


def preview_batch(data: str, *, model: str = "net", transforms: str | None = None, out: str = "preview.png",
                  count: int = 16, seed: int = 0, dataset: str = "imagefolder", val_split: float | None = None,
                  options: dict | None = None, plugins=None) -> dict:
    import itertools

    import torch

    from cvkit import reports
    from cvkit.build import build_transform, model_spec
    from cvkit.data import load_splits
    from cvkit.errors import UsageError
    from cvkit.plugins import get_plugins

    if count < 1:
        raise UsageError(f"--count {count}: must be at least 1")
    plugins = plugins or get_plugins()
    spec = model_spec(model, plugins)
    name = transforms or spec.default_transforms or "plain"
    train_tf = build_transform(spec, name, train=True, options=(options or {}).get("transform"), plugins=plugins)
    splits = load_splits(data, dataset=dataset, train_transform=train_tf, eval_transform=train_tf,
                         val_split=val_split, seed=seed, options=(options or {}).get("dataset"),
                         plugins=plugins)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if isinstance(splits.train, torch.utils.data.IterableDataset):  # a stream: its first samples (it shuffles)
        samples = list(itertools.islice(iter(splits.train), count))
    else:
        samples = (splits.train[i] for i in torch.randperm(len(splits.train), generator=generator)[:count].tolist())
    images, labels = [], []
    for x, y in samples:
        images.append(reports.denormalize(x, spec.mean, spec.std))
        labels.append(splits.classes[int(y)])
    path = reports.image_grid(images, labels, Path(out),
                              title=f"{model}: {len(images)} training images from {data} as the model sees them "
                                    f"({name} transforms, {'x'.join(map(str, spec.input_size))})")
    return {"path": str(path), "model": model, "transforms": name, "images": len(images),
            "classes": splits.classes}
