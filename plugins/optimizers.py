"""Built-in plugin: optimizers. ``params`` holds only the parameters that train."""

import cvkit


def build_sgd(params, *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
              nesterov: bool = False):
    from torch import optim

    return optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def build_adam(params, *, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0):
    from torch import optim

    return optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def build_adamw(params, *, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.01):
    from torch import optim

    return optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


@cvkit.hookimpl
def register_optimizers(register):
    register("sgd", build_sgd, help="optim.SGD with momentum 0.9, as in the chapter")
    register("adam", build_adam, help="optim.Adam")
    register("adamw", build_adamw, help="optim.AdamW (weight decay 0.01)")
