"""Registries: unknown names, malformed registrations, conflicts, and ``--opt`` options."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cvkit.errors import PluginError, UsageError
from cvkit.options import parse_opts
from cvkit.registry import Entry, Registry, make_entry


def _one_error(r, code: int) -> str:
    assert r.code == code, (r.code, r.err)
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1, r.err
    assert lines[0].startswith("cvkit: error: "), lines[0]
    assert "Traceback" not in r.err
    return lines[0]


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "pic.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    return str(path)


# --- unknown names -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, suggestion, available", [
    (["--model", "resnet18-froze"], "Did you mean 'resnet18-frozen'", "models available (see `cvkit list models`)"),
    (["--model", "Net"], "Did you mean 'net'", "models available (see `cvkit list models`)"),
    (["--loss", "cros-entropy"], "Did you mean 'cross-entropy'", "Available: cross-entropy, label-smoothing, mse"),
    (["--step", "--optimizer", "adamm"], "Did you mean 'adam'", "Available: adam, adamw, sgd"),
])
def test_unknown_name_suggests_close_matches(cli, args, suggestion, available):
    line = _one_error(cli("inspect-grad", *args), 2)
    assert suggestion in line
    assert available in line
    option = next(a for a in args if a.startswith("--") and a != "--step")
    assert line.startswith(f"cvkit: error: {option}: unknown ")


def test_unknown_transforms_suggests_close_matches(cli, png):
    line = _one_error(cli("inspect-grad", "--image", png, "--transforms", "plian"), 2)
    assert "--transforms: unknown transform 'plian'" in line
    assert "Did you mean 'plain'" in line
    assert "Available: chapter, plain" in line


def test_unknown_name_without_close_match_lists_what_exists(cli):
    line = _one_error(cli("inspect-grad", "--model", "zzzzzz"), 2)
    assert "Did you mean" not in line
    assert "unknown model 'zzzzzz'" in line and "cvkit list models" in line
    assert "models available" in line  # a zoo of them: counted, not named


@pytest.mark.parametrize("kind", ["models", "model", "losses", "optimizer"])
def test_list_takes_singular_or_plural(cli, kind):
    r = cli("list", kind, "--json")
    assert r.code == 0, r.err
    assert list(json.loads(r.out)) == [kind if kind.endswith("s") else kind + "s"]


def test_list_unknown_kind_is_usage_error(cli):
    line = _one_error(cli("list", "modles"), 2)
    assert "'modles'" in line and "models" in line


def test_list_pattern(cli):
    r = cli("list", "models", "resnet18*", "--json")
    assert r.code == 0
    assert [m["name"] for m in json.loads(r.out)["models"]] == ["resnet18-finetune", "resnet18-frozen"]
    names = [m["name"] for m in json.loads(cli("list", "models", "resnet*", "--json").out)["models"]]
    assert "resnet50-frozen" in names and all(n.startswith("resnet") for n in names)


def test_list_everything_human(cli):
    r = cli("list")
    assert r.code == 0, r.err
    for word in ("models", "families", "transforms", "losses", "optimizers", "schedulers", "datasets",
                 "net", "cross-entropy", "adamw", "cosine", "imagefolder", "chapter"):
        assert word in r.out, word
    assert "1x32x32" in cli("list", "models", "net").out  # a kind alone: every column


# --- malformed registrations ---------------------------------------------------------------------

@pytest.mark.parametrize("call, words", [
    ('register("m", build, input_size=(3, 32), mean=(0.5,) * 3, std=(0.5,) * 3)', ["input_size", "(3, 32)"]),
    ('register("m", build, input_size=(3, 0, 32), mean=(0.5,) * 3, std=(0.5,) * 3)', ["input_size"]),
    ('register("m", build, input_size="3x32x32", mean=(0.5,) * 3, std=(0.5,) * 3)', ["input_size"]),
    ('register("m", build, mean=(0.5,), std=(0.5,))', ["input_size", "None"]),
    ('register("m", build, input_size=(3, 32, 32), mean=(0.5,), std=(0.5,) * 3)', ["mean", "one value per channel (3)"]),
    ('register("m", build, input_size=(1, 32, 32), mean=(0.5,), std=(0.2, 0.2))', ["std", "one value per channel (1)"]),
    ('register("m", None, input_size=(1, 32, 32), mean=(0.5,), std=(0.5,))', ["build must be callable"]),
    ('register("", build, input_size=(1, 32, 32), mean=(0.5,), std=(0.5,))', ["non-empty"]),
])
def test_malformed_model_registration_fails_the_plugin(cli, fake_dist, call, words):
    fake_dist("cvkit-malformed", {"cvkit_malformed": f"""
        import cvkit

        def build(num_classes, weights=None):
            return None

        @cvkit.hookimpl
        def register_models(register):
            register("fine-first", build, input_size=(1, 8, 8), mean=(0.5,), std=(0.5,))
            {call}
    """}, {"malformed": "cvkit_malformed"})
    r = cli("plugins", "--json")
    assert r.code == 0
    info = {p["name"]: p for p in json.loads(r.out)["plugins"]}["malformed"]
    assert info["status"] == "failed" and info["stage"] == "register_models"
    for word in words:
        assert word in info["error"], (word, info["error"])
    r = cli("list", "models", "--json")
    assert r.code == 0
    names = {m["name"] for m in json.loads(r.out)["models"]}
    assert "net" in names and "fine-first" not in names and "m" not in names
    assert "plugin 'malformed'" in r.err and "register_models" in r.err


def test_make_entry_normalises_model_metadata():
    entry = make_entry("models", "p", "m", lambda **kw: None, input_size=[3, 4, 5], mean=[0, 1, 0.5],
                       std=(1, 1, 1), default_transforms="plain")
    assert entry.meta["input_size"] == (3, 4, 5)
    assert entry.meta["mean"] == (0.0, 1.0, 0.5) and all(isinstance(v, float) for v in entry.meta["std"])
    assert entry.kind == "model" and entry.plugin == "p"
    with pytest.raises(ValueError, match="input_size"):
        make_entry("models", "p", "m", lambda: None, input_size=(3, 4, 5.0), mean=(0,) * 3, std=(1,) * 3)
    # other kinds take no required metadata
    assert make_entry("losses", "p", "l", lambda: None).kind == "loss"


# --- registry behaviour --------------------------------------------------------------------------

def _entry(name, plugin, build=lambda: "built"):
    return Entry(kind="loss", name=name, build=build, plugin=plugin)


def test_registry_conflict_and_lookup():
    reg = Registry("losses")
    reg.add(_entry("a", "p1"))
    reg.add(_entry("b", "p1"))
    reg.add(_entry("b", "p2"))
    reg.add(_entry("b", "p3"))
    assert reg.names() == ["a", "b"]
    assert "b" in reg and "c" not in reg
    assert [e.name for e in reg.entries()] == ["a"]
    assert [e.plugin for e in reg.conflicts["b"]] == ["p1", "p2", "p3"]
    assert reg.get("a").create() == "built"
    with pytest.raises(PluginError, match="'p1' and 'p2' and 'p3'") as info:
        reg.get("b", option="--loss")
    assert str(info.value).startswith("--loss: loss 'b' is registered by two plugins")
    with pytest.raises(UsageError, match=r"unknown loss 'aa'\. Did you mean 'a'"):
        reg.get("aa")


def test_empty_registry_says_none_available():
    with pytest.raises(UsageError, match="Available: none"):
        Registry("schedulers").get("step")


def test_factory_exception_becomes_plugin_error_naming_plugin():
    def build():
        raise ZeroDivisionError("oops")

    with pytest.raises(PluginError) as info:
        _entry("x", "someplugin", build).create()
    assert "plugin 'someplugin' failed in the factory of loss 'x': ZeroDivisionError: oops" in str(info.value)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_factory_cvkit_error_passes_through():
    def build():
        raise UsageError("my own message")

    with pytest.raises(UsageError, match="^my own message$"):
        _entry("x", "p", build).create()


def test_broken_model_factory_is_exit_5(cli, fake_dist):
    fake_dist("cvkit-fragile", {"cvkit_fragile": """
        import cvkit

        def build(num_classes, weights=None):
            raise ZeroDivisionError("fragile factory")

        @cvkit.hookimpl
        def register_models(register):
            register("fragile", build, input_size=(1, 8, 8), mean=(0.5,), std=(0.5,))
    """}, {"fragile": "cvkit_fragile"})
    line = _one_error(cli("inspect-grad", "--model", "fragile"), 5)
    assert "plugin 'fragile' failed in the factory of model 'fragile'" in line
    assert "ZeroDivisionError: fragile factory" in line


# --- --opt ---------------------------------------------------------------------------------------

def test_parse_opts_values():
    assert parse_opts(None) == {} and parse_opts([]) == {}
    assert parse_opts([
        "optimizer.momentum=0.5", "optimizer.nesterov=true", "optimizer.betas=[0.9,0.99]",
        "model.name=abc", "loss.empty=", "model.n=3", " transform.flip = 0 ", "scheduler.x=null",
        "dataset.expr=a=b",
    ]) == {
        "optimizer": {"momentum": 0.5, "nesterov": True, "betas": [0.9, 0.99]},
        "model": {"name": "abc", "n": 3},
        "loss": {"empty": ""},
        "transform": {"flip": 0},
        "scheduler": {"x": None},
        "dataset": {"expr": "a=b"},
    }
    # a value that is not valid YAML stays a string
    assert parse_opts(["model.s=[1,2"]) == {"model": {"s": "[1,2"}}
    # the last one wins
    assert parse_opts(["loss.a=1", "loss.a=2"]) == {"loss": {"a": 2}}


@pytest.mark.parametrize("item, words", [
    ("momentum=0.5", ["expected KIND.KEY=VALUE"]),
    ("optimizer.momentum", ["expected KIND.KEY=VALUE"]),
    ("optimizer.=0.5", ["expected KIND.KEY=VALUE"]),
    ("optimizers.momentum=0.5", ["unknown kind 'optimizers'", "optimizer"]),
    ("optim.momentum=0.5", ["unknown kind 'optim'"]),
])
def test_parse_opts_rejects(item, words):
    with pytest.raises(UsageError) as info:
        parse_opts([item])
    for word in words:
        assert word in str(info.value)
    assert repr(item) in str(info.value)


@pytest.mark.parametrize("item", ["momentum=0.5", "optim.momentum=0.5"])
def test_bad_opt_is_exit_2(cli, item):
    line = _one_error(cli("inspect-grad", "--opt", item), 2)
    assert f"--opt {item!r}" in line


@pytest.mark.parametrize("args, words", [
    (["--opt", "loss.bogus=1"], ["--opt loss.bogus", "loss 'mse' has no option 'bogus'", "accepts: none"]),
    (["--loss", "cross-entropy", "--opt", "loss.smoothing=0.1"],
     ["loss 'cross-entropy' has no option 'smoothing'", "accepts: label_smoothing"]),
    (["--opt", "model.dropout=0.5"], ["model 'net' has no option 'dropout'"]),
    (["--step", "--opt", "optimizer.bogus=1"],
     ["optimizer 'sgd' has no option 'bogus'", "accepts: momentum, weight_decay, nesterov)"]),
    # arguments cvkit passes itself are not options
    (["--step", "--opt", "optimizer.params=1"], ["optimizer 'sgd' has no option 'params'"]),
    (["--step", "--opt", "optimizer.lr=1"], ["optimizer 'sgd' has no option 'lr'"]),
    (["--opt", "model.num_classes=3"], ["model 'net' has no option 'num_classes'"]),
])
def test_unknown_option_key_is_exit_2_naming_it(cli, args, words):
    line = _one_error(cli("inspect-grad", *args), 2)
    for word in words:
        assert word in line, (word, line)


def test_known_options_reach_the_factory(cli):
    import torch

    from cvkit.build import build_loss, build_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer("sgd", params, lr=0.1, options={"momentum": 0.25, "nesterov": True})
    assert opt.defaults["momentum"] == 0.25 and opt.defaults["nesterov"] is True
    assert build_loss("cross-entropy", options={"label_smoothing": 0.2}).label_smoothing == 0.2

    def run(smoothing):
        r = cli("inspect-grad", "--loss", "label-smoothing", "--opt", f"loss.smoothing={smoothing}",
                "--step", "--optimizer", "adam", "--opt", "optimizer.betas=[0.5,0.6]", "--json")
        assert r.code == 0, r.err
        return json.loads(r.out)

    plain, smoothed = run(0.0), run(0.3)
    # smoothing 0 is plain cross-entropy (NllLoss); with smoothing the graph adds the smoothing term
    assert plain["loss"]["grad_fn"] == "NllLossBackward0"
    assert smoothed["loss"]["grad_fn"] == "AddBackward0"
    assert plain["loss"]["value"] != smoothed["loss"]["value"]
    assert smoothed["step"]["optimizer"] == "adam"
