"""The example third-party plugin, examples/cvkit-tinymlp, installed with real pip and used through
the command line, as its users (and docs/plugins.md) do.

pip installs a copy of the example into a temporary ``--target`` folder (offline: no dependencies,
no build isolation, the venv's setuptools); each check then runs ``python -m cvkit`` with that folder
on PYTHONPATH, so cvkit finds the plugin through the installed ``*.dist-info`` entry points.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import REPO, run_cvkit

EXAMPLE = REPO / "examples" / "cvkit-tinymlp"

pytestmark = pytest.mark.slow


def _params(hidden: int, num_classes: int = 10, in_features: int = 28 * 28) -> int:
    return in_features * hidden + hidden + hidden * num_classes + num_classes


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The example, pip-installed into a temporary folder; returns the env that puts it on sys.path."""
    root = tmp_path_factory.mktemp("tinymlp")
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in examples/.
    src = shutil.copytree(EXAMPLE, root / "src", ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    target = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "cvkit_tinymlp.py").is_file()
    return {"PYTHONPATH": str(target), "CVKIT_STRICT_PLUGINS": "1", "COLUMNS": "200"}


def _json(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_installed_plugin_is_loaded_and_lists_its_registrations(site):
    report = _json(run_cvkit("plugins", "--json", env=site))
    assert report["problems"] == []
    tiny = next(p for p in report["plugins"] if p["name"] == "tinymlp")
    assert tiny["status"] == "loaded", tiny
    assert (tiny["distribution"], tiny["version"], tiny["module"], tiny["builtin"]) == (
        "cvkit-tinymlp", "0.1.0", "cvkit_tinymlp", False)
    assert tiny["registered"] == {"models": ["tiny-mlp"], "transforms": ["tiny-aug"],
                                  "losses": ["smooth-ce"], "optimizers": ["tiny-adamw"],
                                  "callbacks": ["tinymlp-log"], "commands": ["tinymlp-info"]}

    listing = _json(run_cvkit("list", "models", "--json", env=site))
    model = next(m for m in listing["models"] if m["name"] == "tiny-mlp")
    assert model["plugin"] == "tinymlp"
    assert model["input_size"] == [1, 28, 28]
    assert (model["mean"], model["std"], model["default_transforms"]) == ([0.5], [0.5], "plain")
    callbacks = _json(run_cvkit("list", "callbacks", "--json", env=site))["callbacks"]
    assert [(c["name"], c["plugin"]) for c in callbacks if c["name"] == "tinymlp-log"] == [("tinymlp-log", "tinymlp")]


def test_inspect_grad_steps_the_plugin_model_with_its_loss_and_optimizer(site):
    report = _json(run_cvkit("inspect-grad", "--model", "tiny-mlp", "--json", "--step",
                             "--loss", "smooth-ce", "--optimizer", "tiny-adamw", "--device", "cpu",
                             env=site))
    assert report["model"]["plugin"] == "tinymlp"
    assert report["model"]["parameters"] == _params(64)
    assert report["input"]["shape"] == [1, 1, 28, 28]
    assert report["output"]["shape"] == [1, 10]
    names = [p["name"] for p in report["parameters"]]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert report["gradients"]["received"] == names and report["gradients"]["none"] == []
    assert all(p["grad_after_backward"]["norm"] > 0 for p in report["parameters"])
    assert report["step"]["optimizer"] == "tiny-adamw"
    assert all(p["change_norm"] > 0 for p in report["step"]["parameters"])


def test_model_option_changes_the_parameter_count(site):
    report = _json(run_cvkit("inspect-grad", "--model", "tiny-mlp", "--json", "--device", "cpu",
                             "--opt", "model.hidden=16", env=site))
    assert report["model"]["parameters"] == _params(16) != _params(64)
    assert [p["shape"] for p in report["parameters"]][0] == [16, 784]


def test_plugin_command_runs(site):
    proc = run_cvkit("tinymlp-info", "--hidden", "8", "--num-classes", "3", env=site)
    assert proc.returncode == 0, proc.stderr
    assert f"{_params(8, 3):,} parameters" in proc.stdout
    assert "fc1.weight" in proc.stdout and "8x784" in proc.stdout


def test_importing_the_plugin_module_does_not_import_torch(site):
    code = ("import sys, cvkit_tinymlp; "
            "heavy = sorted(m for m in ('torch', 'torchvision') if m in sys.modules); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **site})
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def tinymlp_in_process(site, monkeypatch):
    """The installed example on this process's sys.path (for the cheaper in-process checks)."""
    monkeypatch.syspath_prepend(site["PYTHONPATH"])
    yield
    sys.modules.pop("cvkit_tinymlp", None)


def test_weights_none_path_and_imagenet(tinymlp_in_process, cli, tmp_path):
    import torch

    from cvkit.build import build_model
    from cvkit.errors import CheckpointError

    torch.manual_seed(0)
    assert build_model("tiny-mlp", num_classes=10, weights="none") is not None
    trained = build_model("tiny-mlp", num_classes=10)
    path = tmp_path / "tiny.pt"
    torch.save(trained.state_dict(), path)

    # weights for 10 classes give a 3-class model its fc1; fc2 (the head) starts fresh
    model = build_model("tiny-mlp", num_classes=3, weights=str(path))
    assert torch.equal(model.fc1.weight, trained.fc1.weight)
    assert tuple(model.fc2.weight.shape) == (3, 64)
    with pytest.raises(CheckpointError, match="fc1.weight"):
        build_model("tiny-mlp", num_classes=10, weights=str(path), options={"hidden": 16})

    r = cli("inspect-grad", "--model", "tiny-mlp", "--device", "cpu", "--weights", "imagenet")
    assert r.code == 2 and "--weights imagenet: model 'tiny-mlp' has no pretrained weights" in r.err
    r = cli("inspect-grad", "--model", "tiny-mlp", "--device", "cpu", "--opt", "model.hidden=0")
    assert r.code == 2 and "--opt model.hidden=0" in r.err
    r = cli("inspect-grad", "--model", "tiny-mlp", "--device", "cpu", "--opt", "model.width=3")
    assert r.code == 2 and "has no option 'width' (it accepts: hidden)" in r.err


def test_transform_and_loss_options(tinymlp_in_process):
    import torch
    from PIL import Image

    from cvkit.build import build_loss, build_transform, model_spec

    spec = model_spec("tiny-mlp")
    for train in (True, False):
        transform = build_transform(spec, "tiny-aug", train=train, options={"degrees": 5})
        assert tuple(transform(Image.new("RGB", (40, 30))).shape) == (1, 28, 28)
    logits, targets = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    plain = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.2)
    assert float(build_loss("smooth-ce", options={"smoothing": 0.2})(logits, targets)) == pytest.approx(float(plain))


def test_training_with_the_plugin_callback_logs_each_epoch(site, tmp_path):
    from cvkit_plugins.demo import make_shapes

    make_shapes(tmp_path / "shapes", train_per_class=4, val_per_class=2, size=28, seed=3)
    run = tmp_path / "run"
    summary = _json(run_cvkit("train", str(tmp_path / "shapes"), "--model", "tiny-mlp", "--epochs", "2",
                              "--workers", "0", "--batch-size", "8", "--out", str(run), "--json",
                              "--callback", "tinymlp-log", env=site))
    assert summary["epochs_run"] == 2
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lines = [line.split() for line in (run / "tinymlp-log.txt").read_text().splitlines()]
    assert [int(epoch) for epoch, _ in lines] == [1, 2]
    assert [float(acc) for _, acc in lines] == pytest.approx([float(r["val_accuracy"]) for r in rows], abs=5e-5)


def test_plugin_callback_path_option_rank_0_only_and_bad_path(tinymlp_in_process, tmp_path):
    from cvkit.errors import UsageError
    from cvkit.plugins import get_plugins

    entry = get_plugins()["callbacks"].get("tinymlp-log")
    metrics = {"epoch": 3, "val_accuracy": 0.8125}
    run = SimpleNamespace(run_dir=tmp_path, info=SimpleNamespace(is_main=True))
    entry.create(options={"path": str(tmp_path / "acc.txt")}).on_epoch_end(run, metrics)
    assert (tmp_path / "acc.txt").read_text() == "3 0.8125\n" and not (tmp_path / "tinymlp-log.txt").exists()
    other_rank = SimpleNamespace(run_dir=tmp_path, info=SimpleNamespace(is_main=False))
    entry.create().on_epoch_end(other_rank, metrics)
    assert not (tmp_path / "tinymlp-log.txt").exists()
    with pytest.raises(UsageError, match=r"--opt callback\.tinymlp-log\.path=3"):
        entry.create(options={"path": 3})
