"""The execution plan: how this run's batches are made and computed, decided in one place.

Loader workers, the decoded-picture cache and the transformed-sample cache come first
(``make_loaders``, before the model exists); once the model is built, ``choose_phase_model``
picks what a training step runs: the backbone's features computed once (a frozen backbone under
deterministic transforms), the frozen backbone fused and without autograd (under random
augmentation), or the model itself; wrapped in DistributedDataParallel under torchrun. Every
choice is recorded in the checkpoint's run record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cvkit import ui
from cvkit.accel import (CACHE_BUDGET_BYTES, CachedSamples, cache_decoded_images, cacheable_head, caches_enabled,
                         extract_features, frozen_backbone_model, frozen_head)
from cvkit.data import is_stream, make_loader, resolve_workers
from cvkit.engine.rng import set_rng_state


@dataclass
class Plan:
    workers: int
    deterministic: bool
    decoded: dict | None
    train_loader: Any
    val_loader: Any
    phase_model: Any = None
    extract_seconds: float = 0.0  # feature extraction and decoding: counted in epoch one's training time
    cached_features: bool = False
    frozen_backbone: bool = False
    stream: bool = False  # the training data is an IterableDataset (shards)


def make_loaders(run) -> Plan:
    """Workers, the decoded-picture cache, the transformed-sample cache, and the two loaders."""
    from cvkit import distributed

    config, splits, info, device = run.config, run.splits, run.info, run.device
    workers = resolve_workers(config.workers, len(splits.train), run.spec.input_size, processes=info.local_world)
    deterministic = bool(run.plugins["transforms"].get(run.transform_name).meta.get("deterministic"))
    decoded, stream = None, is_stream(splits.train)
    if not deterministic and not stream:
        # random augmentation: keep the decoded pictures of a small set in memory; decoding the
        # training pictures counts in epoch one's training time, like feature extraction
        decoded = cache_decoded_images([splits.train], workers=workers)
        if decoded is not None and workers > 0 and config.workers in (None, "auto") and device.type == "cpu":
            # what is left per image (the augmentation) is cheaper in this process than the
            # hand-over from worker processes that share its cores (measured: docs/performance.md)
            workers = 0
    if workers == 0 and caches_enabled() and not stream:  # keep transformed samples where that cannot change them
        if deterministic:
            splits.train = CachedSamples(splits.train)
        splits.val = CachedSamples(splits.val)
    train_loader = make_loader(splits.train, batch_size=run.batch, shuffle=True, workers=workers, device=device,
                               seed=config.seed, sampler=distributed.train_sampler(splits.train, info, config.seed,
                                                                                   run.sample_weights))
    val_loader = make_loader(splits.val, batch_size=run.batch, shuffle=False, workers=workers, device=device,
                             seed=config.seed, sampler=distributed.eval_sampler(splits.val, info))
    return Plan(workers, deterministic, decoded, train_loader, val_loader, stream=stream)


def choose_phase_model(run, plan: Plan, checkpoint) -> None:
    """What a training step runs (see the module's docstring); fills ``plan`` and the run record."""
    model, spec = run.model, run.spec
    plan.phase_model = model
    # a stream's features would be this process's shards only, and a new order each epoch
    head = None if plan.stream else cacheable_head(model, spec.head, plan.deterministic)
    if head is not None and run.rule is not None and run.rule.mix is not None:
        head = None  # MixUp/CutMix mix pictures, not features
        run.warnings.append("cached features are off: --mixup/--cutmix mix the pictures, so the frozen "
                            "backbone runs every step")
        if run.info.is_main:
            ui.warn(run.warnings[-1])
    if head is not None:
        _cache_features(run, plan, head, checkpoint)
    elif (frozen := frozen_head(model, spec.head)) is not None:
        # random augmentation: the backbone runs every step, but fused and without autograd
        plan.phase_model = frozen_backbone_model(model, frozen)
    if plan.decoded is not None:
        plan.extract_seconds += plan.decoded["seconds"]
        if not isinstance(run.splits.val, CachedSamples):
            kept_val = cache_decoded_images([run.splits.val], workers=plan.workers,
                                            budget=CACHE_BUDGET_BYTES - plan.decoded["bytes"])
            plan.decoded["images"] += kept_val["images"] if kept_val else 0
    plan.cached_features = head is not None
    plan.frozen_backbone = plan.phase_model is not model and head is None
    if run.info.enabled:  # gradients of the trainable parameters are averaged across processes
        from torch.nn.parallel import DistributedDataParallel

        device = run.device
        plan.phase_model = DistributedDataParallel(plan.phase_model,
                                                   device_ids=[device] if device.type == "cuda" else None)
    run.run_record = {"device": str(run.device), "precision": run.precision, "workers": plan.workers,
                      "transforms": run.transform_name, "layout": run.splits.layout.get("layout"),
                      "channels_last": run.run_record.get("channels_last", False),
                      "cached_features": plan.cached_features, "frozen_backbone": plan.frozen_backbone,
                      "decoded_images_kept": plan.decoded["images"] if plan.decoded else 0,
                      "processes": run.info.world, "backend": run.info.backend, "warnings": run.warnings,
                      **_recipe_record(run)}


def _recipe_record(run) -> dict:
    """The recipe's parts as this run applies them (the run record of the checkpoint)."""
    config = run.config
    record = {"recipe": config.recipe, "accumulate": config.accumulate, "clip_grad": config.clip_grad,
              "mixup": config.mixup, "cutmix": config.cutmix, "ema": config.ema,
              "scheduler_interval": run.scheduler_interval}
    if "balance" in run.run_record:
        record["balance"] = run.run_record["balance"]
    return record


def _cache_features(run, plan: Plan, head: str, checkpoint) -> None:
    """A frozen backbone under a deterministic transform gives the same features every epoch:
    compute them once; each epoch then trains only the head on them."""
    from torch.utils.data import TensorDataset

    from cvkit import distributed

    config, device, batch = run.config, run.device, run.batch
    t0 = time.perf_counter()
    plain_train = make_loader(run.splits.train, batch_size=batch, shuffle=False, workers=plan.workers, device=device)
    train_features = TensorDataset(*extract_features(run.model, head, plain_train, device=device,
                                                     precision=run.precision))
    val_features = TensorDataset(*extract_features(run.model, head, plan.val_loader, device=device,
                                                   precision=run.precision))
    plan.extract_seconds = time.perf_counter() - t0
    plan.phase_model = run.model.get_submodule(head)
    plan.train_loader = make_loader(train_features, batch_size=batch, shuffle=True, workers=0, device=device,
                                    seed=config.seed,
                                    sampler=distributed.train_sampler(train_features, run.info, config.seed,
                                                                      run.sample_weights))
    plan.val_loader = make_loader(val_features, batch_size=batch, shuffle=False, workers=0,  # this process's shard
                                  device=device)
    if checkpoint is not None:
        set_rng_state(checkpoint.get("rng"), plan.train_loader)
