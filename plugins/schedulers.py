"""Built-in plugin: learning-rate schedulers.

``step`` and ``none`` step once per epoch; ``cosine`` and ``onecycle`` are registered with
``interval="step"``: cvkit steps them after every optimizer step (``steps_per_epoch`` of them per
epoch), so a warm-up of half an epoch or a one-cycle over a two-epoch run is as smooth as over a
long one.
"""

import math

import cvkit


def build_step(optimizer, *, epochs: int, step_size: int = 7, gamma: float = 0.1):
    from torch.optim import lr_scheduler

    return lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


def cosine_factor(step: int, *, total: int, warmup: int, floor: float) -> float:
    """The lr multiplier after ``step`` optimizer steps: linear warm-up over ``warmup`` steps (from
    1/(warmup+1)), then a half cosine from 1 down to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_cosine(optimizer, *, epochs: int, steps_per_epoch: int = 1, warmup_epochs: float = 0.0,
                 eta_min: float = 0.0):
    """Warm-up (``warmup_epochs``, may be a fraction) then cosine decay to ``eta_min``, per step."""
    from torch.optim import lr_scheduler

    total = max(1, epochs * steps_per_epoch)
    warmup = min(total - 1, round(warmup_epochs * steps_per_epoch)) if warmup_epochs else 0
    factors = []
    for group in optimizer.param_groups:
        floor = eta_min / group["lr"] if group["lr"] else 0.0
        factors.append(lambda step, floor=floor: cosine_factor(step, total=total, warmup=warmup, floor=floor))
    return lr_scheduler.LambdaLR(optimizer, factors)


def build_onecycle(optimizer, *, epochs: int, steps_per_epoch: int = 1, warmup_epochs: float = 0.0,
                   div_factor: float = 25.0, final_div_factor: float = 1e4):
    """torch's OneCycleLR peaking at ``--lr``; the rise takes ``warmup_epochs`` (default: a quarter
    of the run)."""
    from torch.optim import lr_scheduler

    total = max(2, epochs * steps_per_epoch)
    pct = min(0.9, max(1 / total, warmup_epochs / epochs)) if warmup_epochs else 0.25
    return lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
                                   pct_start=pct, div_factor=div_factor, final_div_factor=final_div_factor)


def build_none(optimizer, *, epochs: int):
    return None


@cvkit.hookimpl
def register_schedulers(register):
    register("step", build_step, help="StepLR: lr x0.1 every 7 epochs, as in the chapter")
    register("cosine", build_cosine, interval="step",
             help="linear warm-up (--warmup-epochs) then cosine decay to 0, stepped every optimizer step")
    register("onecycle", build_onecycle, interval="step",
             help="OneCycleLR: up to --lr and down again over the run (fastai's fit_one_cycle), per step")
    register("none", build_none, help="a constant learning rate")
