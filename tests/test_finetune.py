"""resnet18-frozen trains only fc and leaves the backbone bit-identical; resnet18-finetune moves it."""

from __future__ import annotations

import json

import pytest
import torch

from cvkit_plugins.demo import make_shapes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft") / "shapes"
    make_shapes(root, train_per_class=3, val_per_class=1, size=32, seed=2)
    return root


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory):
    """A resnet18 state dict with non-trivial BatchNorm statistics, so any drift shows."""
    from cvkit.build import build_model

    torch.manual_seed(5)
    model = build_model("resnet18-finetune", num_classes=1000, weights="none")
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def built(monkeypatch):
    """The state dict of each model ``cvkit train`` builds, as built (before any training step)."""
    import cvkit.engine.setup

    states = []
    real = cvkit.engine.setup.build_model

    def build_model(*args, **kwargs):
        model = real(*args, **kwargs)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(cvkit.engine.setup, "build_model", build_model)
    return states


def _train(cli, data, out, model, weights):
    r = cli("train", str(data), "--model", model, "--weights", str(weights), "--epochs", "1",
            "--batch-size", "6", "--lr", "0.01", "--workers", "0", "--out", str(out), "--json")
    assert r.code == 0, r.err
    return json.loads(r.out)


def _assert_new_trained_fc(trained: dict, start: dict, initial: dict) -> None:
    """fc was replaced for the data's 4 classes (the start weights have 1000) and then trained."""
    assert start["fc.weight"].shape == (1000, 512)
    assert trained["fc.weight"].shape == initial["fc.weight"].shape == (4, 512)
    assert trained["fc.bias"].shape == initial["fc.bias"].shape == (4,)
    for k in ("fc.weight", "fc.bias"):
        assert not torch.equal(trained[k], initial[k]), f"{k} did not change in training"


def test_frozen_backbone_is_bit_identical_and_fc_changes(cli, data, start_weights, tmp_path, built):
    _train(cli, data, tmp_path / "frozen", "resnet18-frozen", start_weights)
    start = torch.load(start_weights, weights_only=True)
    trained = torch.load(tmp_path / "frozen" / "last.pt", weights_only=True)["model_state"]
    backbone = [k for k in start if not k.startswith("fc.")]
    assert any(k.endswith("running_mean") for k in backbone) and len(backbone) > 100
    for k in backbone:  # weights and BatchNorm buffers alike
        assert torch.equal(trained[k], start[k]), k
    assert len(built) == 1
    _assert_new_trained_fc(trained, start, built[0])
    fresh = torch.load(tmp_path / "frozen" / "best.pt", weights_only=True)
    assert fresh["optimizer_state"]["param_groups"][0]["params"] == [0, 1]  # only fc reached the optimizer


def test_finetune_changes_every_backbone_tensor_and_fc(cli, data, start_weights, tmp_path, built):
    _train(cli, data, tmp_path / "finetune", "resnet18-finetune", start_weights)
    start = torch.load(start_weights, weights_only=True)
    trained = torch.load(tmp_path / "finetune" / "last.pt", weights_only=True)["model_state"]
    assert len(built) == 1
    initial = built[0]
    backbone = [k for k in start if not k.startswith("fc.")]
    assert set(trained) == set(start) and len(backbone) > 100
    for k in backbone:  # the built model starts from the weights file, then every tensor moves
        assert torch.equal(initial[k], start[k]), k
        assert not torch.equal(trained[k], start[k]), f"{k} did not change in training"
    _assert_new_trained_fc(trained, start, initial)
