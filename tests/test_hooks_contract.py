"""The plugin API contract: every hook is documented, tested, and works end to end.

Each ``test_hook_<name>`` installs a tiny plugin implementing that one hook with the ``fake_dist``
fixture (a real ``*.dist-info`` with ``cvkit`` entry points on sys.path), so it goes through real
entry-point discovery, pluggy validation, the registries, ``cvkit.build`` and the command line.
"""

from __future__ import annotations

import inspect
import json
import re

import pytest

from cvkit import hookspecs
from cvkit.build import (build_dataset, build_loss, build_model, build_optimizer, build_scheduler,
                         build_transform, model_spec)
from cvkit.errors import UsageError
from cvkit.plugins import get_plugins
from conftest import REPO

HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
               if name.startswith("register_"))


def test_hook_list_matches_pluggy():
    from cvkit.plugins import Plugins

    pm_hooks = sorted(n for n in dir(Plugins().pm.hook) if n.startswith("register_"))
    assert HOOKS == pm_hooks and len(HOOKS) == 8


def test_every_hook_is_documented():
    doc = (REPO / "docs" / "plugins.md").read_text()
    headings = set(re.findall(r"^## (\S+)\s*$", doc, re.M))
    missing = [h for h in HOOKS if h not in headings]
    assert not missing, f"docs/plugins.md has no '## <hook>' section for: {missing}"


def test_every_hook_has_a_test():
    source = "\n".join(p.read_text() for p in sorted((REPO / "tests").rglob("test_*.py")))
    missing = [h for h in HOOKS if not re.search(rf"^\s*def test_hook_{h}\b", source, re.M)]
    assert not missing, f"no test function test_hook_<name> for: {missing}"


def _entry(kind: str, name: str):
    return get_plugins()[kind].get(name)


# ---------------------------------------------------------------------------------------------
# one end-to-end test per hook


MODEL_PLUGIN = """
import cvkit
from cvkit.errors import UsageError


def build(num_classes, weights=None, *, width: int = 4):
    from torch import nn

    if weights not in (None, "none"):
        raise UsageError(f"--weights {weights}: contract-mlp has no weights")
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, width), nn.ReLU(), nn.Linear(width, num_classes))


@cvkit.hookimpl
def register_models(register):
    register("contract-mlp", build, input_size=(2, 4, 4), mean=(0.5, 0.5), std=(0.25, 0.25),
             default_transforms="plain", help="a contract test model")
"""


def _mlp_params(width, num_classes, in_features=2 * 4 * 4):
    return in_features * width + width + width * num_classes + num_classes


def test_hook_register_models(fake_dist, cli):
    fake_dist("cvkit-contract-models", {"contract_models": MODEL_PLUGIN}, {"cmodels": "contract_models"})

    entry = _entry("models", "contract-mlp")
    assert entry.plugin == "cmodels" and entry.help == "a contract test model"
    spec = model_spec("contract-mlp")
    assert (spec.input_size, spec.mean, spec.std, spec.default_transforms) == (
        (2, 4, 4), (0.5, 0.5), (0.25, 0.25), "plain")

    model = build_model("contract-mlp", num_classes=3, options={"width": 5})
    assert sum(p.numel() for p in model.parameters()) == _mlp_params(5, 3)

    r = cli("list", "models", "--json")
    assert r.code == 0, r.err
    row = next(m for m in json.loads(r.out)["models"] if m["name"] == "contract-mlp")
    assert row["plugin"] == "cmodels" and row["input_size"] == [2, 4, 4]

    # --opt reaches the factory through the command line ...
    r = cli("inspect-grad", "--model", "contract-mlp", "--num-classes", "3", "--device", "cpu",
            "--opt", "model.width=7", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["model"]["parameters"] == _mlp_params(7, 3)
    assert report["input"]["shape"] == [1, 2, 4, 4] and report["output"]["shape"] == [1, 3]
    # ... an unknown option is a usage error naming it and what the factory accepts ...
    r = cli("inspect-grad", "--model", "contract-mlp", "--device", "cpu", "--opt", "model.depth=2")
    assert r.code == 2
    assert "model.depth" in r.err and "'depth'" in r.err and "accepts: width" in r.err
    # ... and a UsageError raised by the factory keeps its exit code and message.
    r = cli("inspect-grad", "--model", "contract-mlp", "--device", "cpu", "--weights", "imagenet")
    assert r.code == 2 and "contract-mlp has no weights" in r.err


TRANSFORM_PLUGIN = """
import cvkit


class Fixed:
    def __init__(self, input_size, fill, train):
        self.input_size, self.fill, self.train = input_size, fill, train

    def __call__(self, img):
        import torch

        return torch.full(self.input_size, float(self.fill))


def build(*, train, input_size, mean, std, fill: float = 0.0):
    return Fixed(tuple(input_size), fill, train)


@cvkit.hookimpl
def register_transforms(register):
    register("contract-fill", build, help="every image becomes a constant tensor")
"""


def test_hook_register_transforms(fake_dist, cli, tmp_path):
    from PIL import Image

    fake_dist("cvkit-contract-transforms", {"contract_transforms": TRANSFORM_PLUGIN},
              {"ctransforms": "contract_transforms"})
    assert _entry("transforms", "contract-fill").plugin == "ctransforms"

    spec = model_spec("net")  # the transform is sized by the model's registration
    transform = build_transform(spec, "contract-fill", train=True, options={"fill": 2.5})
    x = transform(Image.new("RGB", (9, 7)))
    assert tuple(x.shape) == spec.input_size and float(x.mean()) == 2.5 and transform.train is True
    with pytest.raises(UsageError, match="transform.blur"):
        build_transform(spec, "contract-fill", train=False, options={"blur": 1})

    image = tmp_path / "img.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    r = cli("inspect-grad", "--model", "net", "--device", "cpu", "--image", str(image),
            "--transforms", "contract-fill", "--opt", "transform.fill=1", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["input"] == {"source": str(image), "shape": [1, 1, 32, 32]}


LOSS_PLUGIN = """
import cvkit


def build(scale: float = 1.0):
    def scaled_sum(logits, targets):
        return scale * logits.sum() + 0 * targets.sum()

    return scaled_sum


@cvkit.hookimpl
def register_losses(register):
    register("contract-sum", build, help="scale * sum(logits)")
"""


def test_hook_register_losses(fake_dist, cli):
    import torch

    fake_dist("cvkit-contract-losses", {"contract_losses": LOSS_PLUGIN}, {"closses": "contract_losses"})
    loss = build_loss("contract-sum", options={"scale": 3})
    assert float(loss(torch.ones(2, 4), torch.tensor([0, 1]))) == 24.0

    values = []
    for scale in ("1", "2"):
        r = cli("inspect-grad", "--model", "net", "--device", "cpu", "--loss", "contract-sum",
                "--opt", f"loss.scale={scale}", "--json")
        assert r.code == 0, r.err
        report = json.loads(r.out)
        assert report["loss"]["name"] == "contract-sum"
        values.append(report["loss"]["value"])
    assert values[1] == pytest.approx(2 * values[0])


OPTIMIZER_PLUGIN = """
import cvkit


def build(params, *, lr, factor: float = 1.0):
    from torch import optim

    return optim.SGD(params, lr=lr * factor)


@cvkit.hookimpl
def register_optimizers(register):
    register("contract-sgd", build, help="SGD with lr * factor")
"""


def test_hook_register_optimizers(fake_dist, cli):
    import torch

    fake_dist("cvkit-contract-optimizers", {"contract_optimizers": OPTIMIZER_PLUGIN},
              {"coptimizers": "contract_optimizers"})
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer("contract-sgd", [p], lr=0.5, options={"factor": 2})
    assert opt.param_groups[0]["lr"] == 1.0 and opt.param_groups[0]["params"] == [p]

    moved = {}
    for factor in ("0", "1"):
        r = cli("inspect-grad", "--model", "net", "--device", "cpu", "--step", "--optimizer",
                "contract-sgd", "--lr", "0.1", "--opt", f"optimizer.factor={factor}", "--json")
        assert r.code == 0, r.err
        step = json.loads(r.out)["step"]
        assert step["optimizer"] == "contract-sgd"
        moved[factor] = [q["change_norm"] for q in step["parameters"]]
    assert all(v == 0 for v in moved["0"]) and all(v > 0 for v in moved["1"])


SCHEDULER_PLUGIN = """
import cvkit


def build_halve(optimizer, *, epochs, every: int = 1):
    from torch.optim import lr_scheduler

    return lr_scheduler.StepLR(optimizer, step_size=every, gamma=0.5)


def build_constant(optimizer, *, epochs):
    return None


@cvkit.hookimpl
def register_schedulers(register):
    register("contract-halve", build_halve, help="halve the lr every N epochs")
    register("contract-constant", build_constant, help="no scheduler")
"""


def test_hook_register_schedulers(fake_dist, cli):
    import torch

    fake_dist("cvkit-contract-schedulers", {"contract_schedulers": SCHEDULER_PLUGIN},
              {"cschedulers": "contract_schedulers"})
    r = cli("list", "schedulers", "contract-*", "--json")
    assert r.code == 0, r.err
    assert [(s["name"], s["plugin"]) for s in json.loads(r.out)["schedulers"]] == [
        ("contract-constant", "cschedulers"), ("contract-halve", "cschedulers")]

    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    sched = build_scheduler("contract-halve", opt, epochs=5, options={"every": 2})
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5]
    assert build_scheduler("contract-constant", opt, epochs=5) is None
    with pytest.raises(UsageError, match="scheduler.gamma"):
        build_scheduler("contract-halve", opt, epochs=5, options={"gamma": 0.1})


DATASET_PLUGIN = """
import cvkit
from cvkit.errors import DataError


def build(root, *, split, transform, size: int = 3):
    from PIL import Image

    if split not in ("train", "val"):
        raise DataError(f"{root}: no {split!r} split")

    class Blank:
        classes = ["even", "odd"]

        def __len__(self):
            return size

        def __getitem__(self, i):
            return transform(Image.new("L", (8, 8), i)), i % 2

    return Blank()


@cvkit.hookimpl
def register_datasets(register):
    register("contract-blank", build, help="blank images")
"""


def test_hook_register_datasets(fake_dist, tmp_path):
    from cvkit.errors import DataError

    fake_dist("cvkit-contract-datasets", {"contract_datasets": DATASET_PLUGIN},
              {"cdatasets": "contract_datasets"})
    assert _entry("datasets", "contract-blank").plugin == "cdatasets"
    spec = model_spec("net")
    transform = build_transform(spec, train=False)  # the model's default transform, "plain"
    ds = build_dataset("contract-blank", str(tmp_path), split="train", transform=transform,
                       options={"size": 5})
    assert len(ds) == 5 and ds.classes == ["even", "odd"]
    x, y = ds[3]
    assert tuple(x.shape) == spec.input_size and y == 1
    with pytest.raises(DataError, match="'test'"):
        build_dataset("contract-blank", str(tmp_path), split="test", transform=transform)
    with pytest.raises(UsageError, match="dataset.colour"):
        build_dataset("contract-blank", str(tmp_path), split="train", transform=transform,
                      options={"colour": "red"})


COMMAND_PLUGIN = """
import cvkit


@cvkit.hookimpl
def register_commands(app):
    import typer

    @app.command("contract-hello")
    def hello(name: str = typer.Option("world", help="Who to greet."), shout: bool = False):
        \"\"\"Greet someone (a contract test command).\"\"\"
        from cvkit import ui
        from cvkit.errors import UsageError

        if name == "nobody":
            raise UsageError("--name nobody: greet somebody")
        text = f"hello {name}"
        ui.out.print(text.upper() if shout else text)
"""


def test_hook_register_commands(fake_dist, cli):
    fake_dist("cvkit-contract-commands", {"contract_commands": COMMAND_PLUGIN},
              {"ccommands": "contract_commands"})
    r = cli("contract-hello", "--name", "cvkit", "--shout")
    assert r.code == 0, r.err
    assert r.out.strip() == "HELLO CVKIT"
    r = cli("contract-hello", "--name", "nobody")
    assert r.code == 2 and "greet somebody" in r.err

    r = cli("--help")
    assert r.code == 0 and "contract-hello" in r.out
    r = cli("plugins", "--json")
    info = next(p for p in json.loads(r.out)["plugins"] if p["name"] == "ccommands")
    assert info["status"] == "loaded" and info["registered"] == {"commands": ["contract-hello"]}


# ---------------------------------------------------------------------------------------------
# the rules around the hooks


def test_hook_implementation_may_take_fewer_arguments_than_its_spec(fake_dist):
    fake_dist("cvkit-contract-fewer", {"contract_fewer": """
        import cvkit

        CALLS = []


        @cvkit.hookimpl
        def register_losses():
            CALLS.append("register_losses")


        @cvkit.hookimpl
        def register_models(register):
            register("contract-fewer", lambda num_classes, weights=None: None,
                     input_size=(1, 2, 2), mean=(0,), std=(1,))
    """}, {"fewer": "contract_fewer"})
    plugins = get_plugins()
    info = next(p for p in plugins.infos if p.name == "fewer")
    assert info.status == "loaded", info.problem()
    assert info.hooks == ["register_losses", "register_models"]
    assert info.registered == {"models": ["contract-fewer"]}
    import contract_fewer

    assert contract_fewer.CALLS == ["register_losses"]


def test_hook_implementation_with_an_argument_not_in_the_spec_fails_validation(fake_dist, cli):
    fake_dist("cvkit-contract-extra", {"contract_extra": """
        import cvkit

        @cvkit.hookimpl
        def register_losses(register, device):
            register("never", lambda: None)
    """}, {"extra": "contract_extra"})
    r = cli("plugins", "--json")
    assert r.code == 0, r.err
    info = next(p for p in json.loads(r.out)["plugins"] if p["name"] == "extra")
    assert (info["status"], info["stage"]) == ("failed", "validation")
    assert "plugin 'extra'" in r.err and "failed in validation" in r.err


def test_misspelt_hook_name_is_a_validation_failure(fake_dist, cli):
    fake_dist("cvkit-contract-typo", {"contract_typo": """
        import cvkit

        @cvkit.hookimpl
        def register_model(register):
            register("never", lambda num_classes, weights=None: None,
                     input_size=(1, 2, 2), mean=(0,), std=(1,))
    """}, {"typo": "contract_typo"})
    r = cli("list", "models", "--json")
    assert r.code == 0, r.err  # the others keep working
    assert "never" not in {m["name"] for m in json.loads(r.out)["models"]}
    assert r.err.count("\n") == 1 and "unknown hook 'register_model'" in r.err
    assert "failed in validation" in r.err and "register_models" in r.err


def test_name_registered_by_two_plugins_is_an_error_naming_both(fake_dist, cli):
    source = """
        import cvkit

        @cvkit.hookimpl
        def register_losses(register):
            register("contract-dup", lambda: None)
    """
    fake_dist("cvkit-contract-dup-a", {"contract_dup_a": source}, {"dupa": "contract_dup_a"})
    fake_dist("cvkit-contract-dup-b", {"contract_dup_b": source}, {"dupb": "contract_dup_b"})
    r = cli("list", "losses", "contract-*", "--json")
    assert r.code == 0
    [row] = json.loads(r.out)["losses"]
    assert row["conflict"] is True and row["plugin"] == "dupa, dupb"
    assert "'dupa' and 'dupb'" in r.err

    r = cli("inspect-grad", "--model", "net", "--device", "cpu", "--loss", "contract-dup")
    assert r.code == 5 and "'dupa' and 'dupb'" in r.err
    with pytest.raises(Exception, match="'dupa' and 'dupb'"):
        build_loss("contract-dup")
