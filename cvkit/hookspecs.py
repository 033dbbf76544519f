"""The cvkit plugin API: the hooks a plugin may implement.

A plugin is a module (or object) with functions marked ``@cvkit.hookimpl`` whose names match the
specifications below. It is found through the ``cvkit`` entry-point group of an installed
distribution. An implementation may take fewer arguments than its specification.

Every ``register`` callable has the form ``register(name, build, *, help="", **metadata)``: ``build``
is a factory, called only when the thing is used, so a plugin module must not import torch at module
level (import it inside the factory). A factory may accept extra keyword options; users pass them
with ``--opt KIND.KEY=VALUE`` or the ``options:`` mapping of a YAML config.

The full contract, with an example for each hook, is in docs/plugins.md.
"""

import pluggy

hookspec = pluggy.HookspecMarker("cvkit")
hookimpl = pluggy.HookimplMarker("cvkit")


@hookspec
def register_models(register):
    """Register models: ``register(name, build, *, input_size, mean, std, help="", default_transforms=None)``.

    ``build(num_classes: int, weights: str | None, **options) -> torch.nn.Module``. ``input_size`` is
    ``(channels, height, width)``; ``mean`` and ``std`` (one value per channel) are the normalisation
    the model expects; ``default_transforms`` names the transforms used when the user names none;
    ``head`` (optional) names the attribute of the final classifier layer, promising that
    ``forward(x)`` equals ``head(f(x))`` where ``f`` is the model with that layer replaced by
    ``nn.Identity()``: with a frozen backbone, cvkit may then cache ``f(x)``; it may be a dotted
    path (``classifier.3``). Optional: ``resize`` (the eval transform's resize before the crop),
    ``interpolation`` (``bilinear``, ``bicubic``), ``family`` (the group ``cvkit list`` counts),
    ``cam_layer`` (the dotted path of the module whose output ``cvkit explain`` uses for Grad-CAM,
    ``-1`` indexing the last of a Sequential; found by cvkit when not named).
    """


@hookspec
def register_transforms(register):
    """Register image transforms: ``register(name, build, *, help="", deterministic=False)``.

    ``build(*, train: bool, input_size: tuple[int, int, int], mean, std, **options)`` returns a
    callable ``PIL.Image -> Tensor[C, H, W]``. The eval transform (``train=False``) must be
    deterministic; ``deterministic=True`` says the train transform is too, so cvkit may cache its
    results across epochs.
    """


@hookspec
def register_losses(register):
    """Register losses: ``register(name, build, *, help="")``.

    ``build(**options)`` returns a callable ``(logits: Tensor[N, C], targets: LongTensor[N]) -> scalar Tensor``.
    With ``--mixup`` / ``--cutmix`` the targets are class probabilities (``Tensor[N, C]``, rows summing
    to 1). A factory that takes a ``weight`` keyword gets one weight per class for ``--balance loss``.
    """


@hookspec
def register_optimizers(register):
    """Register optimizers: ``register(name, build, *, help="")``.

    ``build(params, *, lr: float, **options) -> torch.optim.Optimizer``; ``params`` holds only the
    parameters that train.
    """


@hookspec
def register_schedulers(register):
    """Register learning-rate schedulers: ``register(name, build, *, help="", interval="epoch")``.

    ``build(optimizer, *, epochs: int, **options)`` returns a scheduler, or None. With
    ``interval="epoch"`` cvkit steps it once after each epoch's training; with ``interval="step"``
    after every optimizer step. A factory that takes ``steps_per_epoch`` gets the optimizer steps of
    an epoch; one that takes ``warmup_epochs`` gets ``--warmup-epochs`` (a float; without that
    keyword, a warm-up is refused in one line).
    """


@hookspec
def register_datasets(register):
    """Register dataset formats: ``register(name, build, *, help="", splits=("train", "val"))``.

    ``splits`` says which splits the data at a root holds: a tuple, or a callable
    ``splits(root, **options) -> tuple`` that looks (it raises ``cvkit.errors.DataError`` for data it
    cannot read). With ``"val"`` among them cvkit asks for ``split="train"`` and ``split="val"``;
    without, for ``split="train"`` when listed, else ``split=None`` (all of the data), and makes a
    seeded, stratified validation split of it (``--val-split``).

    ``build(root: str, *, split: str | None, transform, **options)`` returns a torch Dataset yielding
    ``(tensor, int)`` pairs with a ``.classes`` list of class names in label order (optional:
    ``.targets``, the label of each sample; ``.samples``, ``(path, label)`` pairs). A factory that
    takes a ``min_side`` keyword gets the smallest image side the model's transforms need. An
    ``IterableDataset`` (sharded data) has a ``__len__`` equal in every training process. The
    model's classes are the train split's; val's classes must be among them. See docs/plugins.md.
    """


@hookspec
def register_callbacks(register):
    """Register training callbacks: ``register(name, build, *, help="")``.

    ``build(**options)`` returns an object; ``cvkit train --callback NAME`` calls whichever of these
    methods it has: ``on_train_start(run)``, ``on_epoch_end(run, metrics)`` (the epoch's row of
    metrics.csv), ``on_train_end(run, summary)`` (what ``--json`` prints), ``on_step_end(run,
    step)`` (after each optimizer step, its loss in ``run.step_loss``; only a callback that defines
    it costs anything per step), ``on_validation_start(run)`` / ``on_validation_end(run)`` (around
    each epoch's validation pass) and ``on_checkpoint(run, payload)`` (the checkpoint dict before it
    is written: add plain data or tensors to it; ``--ema`` puts its averaged weights in this way).
    ``run`` has ``run_dir``, ``model``, ``optimizer``, ``classes``, ``config``, ``epoch``,
    ``history`` and ``should_stop``: setting it to True ends training after the current epoch.
    See docs/plugins.md.
    """


@hookspec
def register_commands(app):
    """Add commands to the cvkit command line; ``app`` is the cvkit ``typer.Typer``."""
