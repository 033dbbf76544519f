"""`cvkit inspect-grad`: the chapter's loss, autograd graph, gradients and one optimizer step."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from conftest import words

NET_PARAMS = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias",
              "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]


@pytest.fixture
def run(cli):
    def run(*args) -> dict:
        r = cli("inspect-grad", *args, "--json")
        assert r.code == 0, r.err
        assert r.err == ""
        return json.loads(r.out)

    return run


def _params(report) -> dict:
    return {p["name"]: p for p in report["parameters"]}


def test_net_model_and_gradients(run):
    report = run("--model", "net")
    m = report["model"]
    assert m["name"] == "net" and m["plugin"] == "net" and m["input_size"] == [1, 32, 32]
    assert "Conv2d(1, 6" in m["repr"]
    assert "Linear(in_features=576, out_features=120" in m["repr"]
    assert "Linear(in_features=84, out_features=10" in m["repr"]
    assert m["parameters"] == m["trainable_parameters"] == sum(p["count"] for p in report["parameters"])
    assert report["input"] == {"source": "random", "shape": [1, 1, 32, 32]}
    assert report["output"]["shape"] == [1, 10]
    assert report["device"] in ("cpu", "cuda", "mps")

    params = _params(report)
    assert list(params) == NET_PARAMS
    bias = params["conv1.bias"]
    assert bias["shape"] == [6] and bias["count"] == 6
    assert bias["grad_before_backward"] is None
    after = bias["grad_after_backward"]
    assert len(after["values"]) == 6 and all(isinstance(v, float) for v in after["values"])
    assert after["nonfinite"] == 0
    assert after["norm"] == pytest.approx(sum(v * v for v in after["values"]) ** 0.5, rel=1e-5)
    assert "values" not in params["fc1.weight"]["grad_after_backward"]  # large tensors: stats only

    assert all(p["grad_before_backward"] is None for p in report["parameters"])
    assert report["gradients"] == {"received": NET_PARAMS, "none": [], "frozen": []}
    assert report["step"] is None


def test_net_loss_and_graph(run):
    report = run("--model", "net")
    loss = report["loss"]
    assert loss["name"] == "mse" and loss["grad_fn"] == "MseLossBackward0"
    assert loss["value"] > 0 and len(loss["target"]) == 1 and 0 <= loss["target"][0] < 10
    graph = report["graph"]
    assert graph["name"] == "MseLossBackward0"
    first = graph["next_functions"][0]
    assert first["name"] == "AddmmBackward0"  # fc3: x @ W.T + b
    leaves = {c.get("parameter") for c in first["next_functions"] if c["name"] == "AccumulateGrad"}
    assert "fc3.bias" in leaves


def test_graph_depth_truncates(run):
    graph = run("--model", "net", "--depth", "2")["graph"]
    addmm = graph["next_functions"][0]
    assert "next_functions" not in addmm and addmm["truncated"] >= 2


def test_same_seed_same_numbers_other_seed_differs(run):
    a, b, c = run("--seed", "3"), run("--seed", "3"), run("--seed", "4")
    assert a["loss"] == b["loss"]
    assert a["loss"]["value"] != c["loss"]["value"]


def test_step_moves_every_parameter(run):
    report = run("--model", "net", "--step")
    step = report["step"]
    assert step["optimizer"] == "sgd" and step["lr"] == 0.01
    assert [p["name"] for p in step["parameters"]] == NET_PARAMS
    for p in step["parameters"]:
        assert p["change_norm"] > 0, p
        assert p["max_abs_change"] > 0, p
    # SGD's first step moves each parameter by lr * grad
    grads = _params(report)
    for p in step["parameters"]:
        assert p["change_norm"] == pytest.approx(0.01 * grads[p["name"]]["grad_after_backward"]["norm"],
                                                 rel=1e-3)


def test_step_with_lr_zero_moves_nothing(run):
    step = run("--model", "net", "--step", "--lr", "0")["step"]
    assert step["lr"] == 0
    assert len(step["parameters"]) == 10
    assert all(p["change_norm"] == 0 and p["max_abs_change"] == 0 for p in step["parameters"])


def test_cross_entropy_graph(run):
    report = run("--model", "net", "--loss", "cross-entropy", "--batch-size", "3")
    assert report["loss"]["grad_fn"] == "NllLossBackward0"
    assert report["graph"]["name"] == "NllLossBackward0"
    assert report["graph"]["next_functions"][0]["name"] == "LogSoftmaxBackward0"
    assert report["input"]["shape"] == [3, 1, 32, 32] and len(report["loss"]["target"]) == 3


def test_image_input(run, tmp_path):
    path = tmp_path / "photo.png"
    img = Image.new("RGB", (64, 48), (30, 200, 90))
    img.putpixel((5, 5), (255, 0, 0))
    img.save(path)
    report = run("--model", "net", "--image", str(path))
    assert report["input"] == {"source": str(path), "shape": [1, 1, 32, 32]}
    two = run("--model", "net", "--image", str(path), "--batch-size", "2")
    assert two["input"]["shape"] == [2, 1, 32, 32]


def test_image_input_feeds_the_image(tmp_path):
    """The input really is the picture through the eval transform, not random numbers."""
    from cvkit.commands.inspect_grad import inspect_grad

    white, black = tmp_path / "white.png", tmp_path / "black.png"
    Image.new("L", (32, 32), 255).save(white)
    Image.new("L", (32, 32), 0).save(black)
    a = inspect_grad(model="net", image=str(white), device="cpu")
    b = inspect_grad(model="net", image=str(black), device="cpu")
    c = inspect_grad(model="net", image=str(white), device="cpu", seed=1)
    assert a["loss"]["value"] != b["loss"]["value"]
    assert a["input"]["source"] == str(white)
    assert c["input"]["shape"] == [1, 1, 32, 32]


def test_human_output(cli):
    r = cli("inspect-grad", "--model", "net", "--step")
    assert r.code == 0, r.err
    for word in ("conv1.bias", "MseLossBackward0", "AddmmBackward0", "gradients after backward()",
                 "Conv2d(1, 6", "conv1.bias.grad before backward: None; after backward: [",
                 "All 10 parameter tensors received gradients", "one sgd step"):
        assert word in words(r.out), word
    assert r.err == ""


def test_resnet18_frozen_only_fc_gets_gradients(run):
    report = run("--model", "resnet18-frozen", "--weights", "none", "--batch-size", "1")
    assert report["model"]["input_size"] == [3, 224, 224]
    assert report["input"]["shape"] == [1, 3, 224, 224]
    grads = report["gradients"]
    assert grads["received"] == ["fc.weight", "fc.bias"]
    params = _params(report)
    others = [n for n in params if not n.startswith("fc.")]
    assert len(others) == 60
    assert sorted(grads["frozen"]) == sorted(others) and sorted(grads["none"]) == sorted(others)
    for name in others:
        assert params[name]["trainable"] is False and params[name]["grad_after_backward"] is None
    assert report["model"]["trainable_parameters"] == 512 * 10 + 10


def test_resnet18_frozen_human_output(cli):
    r = cli("inspect-grad", "--model", "resnet18-frozen", "--weights", "none", "--step")
    assert r.code == 0, r.err
    assert "Only fc.weight, fc.bias received gradients" in words(r.out)
    assert "60 frozen" in words(r.out)


def test_resnet18_frozen_backbone_stays_in_eval_mode():
    from cvkit.build import build_model

    torch.manual_seed(0)
    model = build_model("resnet18-frozen", num_classes=3, weights="none")
    model.train()
    assert model.training and model.fc.training
    backbone = [m for name, m in model.named_modules() if name and not name.startswith("fc")]
    assert backbone and not any(m.training for m in backbone)
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bn) == 20
    before = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in bn]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert out.shape == (2, 3)
    for m, (mean, var, n) in zip(bn, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert int(m.num_batches_tracked) == n
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    model.eval()
    assert not model.fc.training


def test_resnet18_finetune_bn_does_update_in_train_mode():
    """The contrast that makes the frozen test meaningful: a plain resnet18 moves its BN statistics."""
    from cvkit.build import build_model

    model = build_model("resnet18-finetune", num_classes=3, weights="none")
    model.train()
    assert all(m.training for m in model.modules())
    mean = model.bn1.running_mean.clone()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert not torch.equal(model.bn1.running_mean, mean)


def test_resnet18_finetune_all_parameters_get_gradients(run):
    report = run("--model", "resnet18-finetune", "--weights", "none", "--batch-size", "1")
    params = _params(report)
    assert len(params) == 62
    assert report["gradients"]["received"] == list(params)
    assert report["gradients"]["none"] == [] and report["gradients"]["frozen"] == []
    assert report["model"]["parameters"] == report["model"]["trainable_parameters"]
    assert "Linear(in_features=512, out_features=10" in report["model"]["repr"]


def test_num_classes(run):
    report = run("--model", "net", "--num-classes", "3", "--loss", "cross-entropy")
    assert report["output"]["shape"] == [1, 3]
    assert _params(report)["fc3.bias"]["shape"] == [3]
    assert 0 <= report["loss"]["target"][0] < 3


def test_wrong_output_shape_is_usage_error(cli, fake_dist):
    fake_dist("cvkit-flat", {"cvkit_flat": """
        import cvkit

        def build(num_classes, weights=None):
            import torch
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, num_classes + 1))

        @cvkit.hookimpl
        def register_models(register):
            register("off-by-one", build, input_size=(1, 2, 2), mean=(0.5,), std=(0.5,))
    """}, {"flat": "cvkit_flat"})
    r = cli("inspect-grad", "--model", "off-by-one")
    assert r.code == 2
    assert "output has shape [1, 11], expected [1, 10]" in r.err


@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--num-classes", "0"], ["--depth", "0"]])
def test_out_of_range_numbers_are_usage_errors(cli, args):
    r = cli("inspect-grad", *args)
    assert r.code == 2
    assert args[0] in r.err
