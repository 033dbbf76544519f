"""Built-in plugin: learning-rate schedulers, stepped once per epoch."""

import cvkit


def build_step(optimizer, *, epochs: int, step_size: int = 7, gamma: float = 0.1):
    from torch.optim import lr_scheduler

    return lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


def build_cosine(optimizer, *, epochs: int, eta_min: float = 0.0):
    from torch.optim import lr_scheduler

    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=eta_min)


def build_none(optimizer, *, epochs: int):
    return None


@cvkit.hookimpl
def register_schedulers(register):
    register("step", build_step, help="StepLR: lr x0.1 every 7 epochs, as in the chapter")
    register("cosine", build_cosine, help="CosineAnnealingLR over the run's epochs")
    register("none", build_none, help="a constant learning rate")
