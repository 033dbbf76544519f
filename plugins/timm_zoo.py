"""Built-in plugin: every timm model as ``timm/NAME-finetune`` and ``timm/NAME-frozen``.

With ``pip install "cvkit[timm]"``. The names and what each model is given (input size, mean, std,
interpolation, the resize from timm's ``crop_pct``, the classifier's name) come from timm's
pretrained configs, kept in ``timm_table.py`` so that listing imports neither torch nor timm;
``python -m cvkit_plugins.timm_zoo`` writes it again for the installed timm, and a test checks it
against timm. Without timm, building one of these models says in one line how to install it.
"""

from __future__ import annotations

import functools
import re

import cvkit
from cvkit_plugins.timm_table import TABLE


def build(num_classes: int, weights: str | None = None, *, name: str, frozen: bool):
    from cvkit_plugins.zoo_build import build_timm

    return build_timm(name, num_classes, weights, frozen=frozen)


def family_of(name: str) -> str:
    """``timm/`` and the name's leading word, a prefix of every name it counts: ``timm/vit``,
    ``timm/resnet``, ``timm/convnext``, ``timm/mobilenetv3``, ``timm/tf`` (TensorFlow ports), ..."""
    return "timm/" + re.match(r"[a-z]+?(?:v\d+)?(?=[_\d]|$)", name).group()


@cvkit.hookimpl
def register_models(register):
    for name, (crop, resize, interpolation, mean, std, head) in TABLE.items():
        meta = dict(input_size=(3, crop, crop), mean=mean, std=std, resize=resize, interpolation=interpolation,
                    head=head, family=family_of(name), default_transforms="chapter")
        register(f"timm/{name}-finetune", functools.partial(build, name=name, frozen=False), **meta,
                 help=f"timm {name} ({crop}px) with a new head; every parameter trains")
        register(f"timm/{name}-frozen", functools.partial(build, name=name, frozen=True), **meta,
                 unfrozen=f"timm/{name}-finetune", help=f"timm {name} ({crop}px) with a new head; only the head trains")


def make_table() -> dict:
    """name -> (crop, resize, interpolation, mean, std, head or None), from timm's
    pretrained configs (no model is built). ``head`` is None where the model has two classifiers
    (distilled models): they train, but cvkit's cached-features levers do not apply."""
    import math

    import timm
    from timm.models import get_pretrained_cfg

    table = {}
    for name in timm.list_models():
        cfg = get_pretrained_cfg(name)
        crop = int(cfg.input_size[-1])
        resize = int(math.floor(crop / cfg.crop_pct)) if cfg.crop_pct else crop
        head = cfg.classifier if isinstance(cfg.classifier, str) else None
        table[name] = (crop, resize, cfg.interpolation or "bicubic", tuple(float(v) for v in cfg.mean),
                       tuple(float(v) for v in cfg.std), head)
    return table


if __name__ == "__main__":
    import timm

    from cvkit_plugins.tables import write_table

    write_table("timm_table.py", library="timm", version=timm.__version__, table=make_table(),
                what="models: name: (crop, resize, interpolation, mean, std, classifier)")
