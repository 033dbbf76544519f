"""The torchvision model zoo (plugins/torchvision_zoo.py): every classifier torchvision lists, as
NAME-finetune and NAME-frozen, trained, evaluated and used offline with ``--weights none``."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from cvkit_plugins.demo import make_shapes
from cvkit_plugins.torchvision_table import TABLE

# one small model of each of 11 families (vit, convnext and swin among them), inception_v3 at 299
FAMILIES = ["mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5", "mnasnet0_5", "regnet_x_400mf",
            "efficientnet_b0", "convnext_tiny", "vit_b_16", "swin_t", "googlenet", "inception_v3"]


def test_the_table_is_what_the_installed_torchvision_says():
    from torchvision import models

    assert sorted(TABLE) == sorted(models.list_models(module=models))
    for name, entry in TABLE.items():
        weights = models.get_model_weights(name).DEFAULT
        preset = weights.transforms()
        assert entry["weights"] == weights.name, name
        assert (entry["crop"], entry["resize"]) == (preset.crop_size[0], preset.resize_size[0]), name
        assert entry["interpolation"] == preset.interpolation.value, name
        assert (entry["mean"], entry["std"]) == (tuple(preset.mean), tuple(preset.std)), name
        assert entry["params"] == weights.meta["num_params"], name


@pytest.mark.parametrize("name", FAMILIES + ["vgg11", "densenet121", "alexnet", "maxvit_t", "wide_resnet50_2"])
def test_the_head_is_the_last_layer_with_a_thousand_outputs(name):
    from torchvision import models

    with warnings.catch_warnings(), torch.device("cpu" if name.startswith("regnet") else "meta"):
        warnings.simplefilter("ignore", FutureWarning)  # regnet's builder computes on tensors: not on meta
        model = models.get_model(name, weights=None)
    head = model.get_submodule(TABLE[name]["head"])
    assert getattr(head, "out_features", None) == 1000 or getattr(head, "out_channels", None) == 1000


def test_listing_a_family_and_counting_them_all(cli):
    r = cli("list", "models", "efficientnet*", "--json")
    names = [row["name"] for row in json.loads(r.out)["models"]]
    expected = sorted(f"{n}-{kind}" for n in TABLE if n.startswith("efficientnet") for kind in ("finetune", "frozen"))
    assert names == expected and len(names) == 22  # b0-b7 and v2_s, v2_m, v2_l
    overview = cli("list")
    assert overview.code == 0 and "torchvision" in overview.out and "cvkit list models --families" in overview.out
    assert "efficientnet_b0-frozen " not in overview.out  # counted per plugin, not listed
    per_family = json.loads(cli("list", "models", "--families", "--json").out)["families"]
    efficientnet = next(f for f in per_family if f["family"] == "efficientnet")
    assert efficientnet["models"] == 16 and efficientnet["see"] == "cvkit list models 'efficientnet*'"
    assert sum(f["models"] for f in per_family) == len(json.loads(cli("list", "models", "--json").out)["models"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo") / "shapes"
    make_shapes(root, train_per_class=2, val_per_class=1, size=32, seed=2, classes=("circle", "square", "star"))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_trains_evaluates_and_predicts_offline(cli, tiny, tmp_path, name):
    kind = "frozen" if name in ("vit_b_16", "convnext_tiny", "swin_t") else "finetune"  # the big ones: the head
    model = f"{name}-{kind}"
    run = tmp_path / "run"
    r = cli("train", str(tiny), "--model", model, "--weights", "none", "--epochs", "1", "--batch-size", "3",
            "--workers", "0", "--out", str(run), "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["classes"] == ["circle", "square", "star"] and summary["epochs_run"] == 1
    ev = cli("eval", "-c", str(run), "--json")
    assert ev.code == 0 and json.loads(ev.out)["images"] == 3, ev.err
    pr = cli("predict", str(tiny / "val"), "-c", str(run), "--json")
    assert pr.code == 0, pr.err
    rows = json.loads(pr.out)
    assert len(rows) == 3 and all(r["predictions"][0]["label"] in summary["classes"] for r in rows)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "vit_b_16", "inception_v3"])
def test_frozen_keeps_the_backbone_bit_identical_and_only_the_head_trains(name):
    from cvkit.build import build_model, build_optimizer

    model = build_model(f"{name}-frozen", num_classes=3, weights="none")
    head = TABLE[name]["head"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer("sgd", [p for p in model.parameters() if p.requires_grad], lr=0.1)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {f"{head}.weight", f"{head}.bias"}
    model.train()
    assert not any(m.training for n, m in model.named_modules() if n and not n.startswith(head))
    size = TABLE[name]["crop"]
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, size, size)), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"{head}.weight", f"{head}.bias"}  # BatchNorm buffers included: nothing else moved


def test_weights_from_a_safetensors_file_keep_the_backbone_and_refit_the_head(tmp_path):
    """A torchvision-layout .safetensors file (1000-way head) as --weights: the backbone is loaded
    exactly, the head of another class count starts fresh; a file cvkit wrote for another model is
    refused by name."""
    from safetensors.torch import save_file
    from torchvision import models

    from cvkit.build import build_model
    from cvkit.errors import CheckpointError

    source = models.get_model("mobilenet_v3_small", weights=None).state_dict()
    path = tmp_path / "mobilenet.safetensors"
    save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    model = build_model("mobilenet_v3_small-finetune", num_classes=3, weights=str(path))
    got = model.state_dict()
    assert got["classifier.3.weight"].shape == (3, 1024)
    assert all(torch.equal(got[k], v) for k, v in source.items() if not k.startswith("classifier.3."))
    save_file({k: v.contiguous() for k, v in source.items()}, str(path), metadata={"model": "resnet18-frozen"})
    with pytest.raises(CheckpointError, match="a checkpoint of model 'resnet18-frozen'"):
        build_model("mobilenet_v3_small-finetune", num_classes=3, weights=str(path))


def test_weights_none_gives_resnets_zero_init_residual():
    from cvkit.build import build_model

    model = build_model("resnet50-finetune", num_classes=3, weights="none")
    last_bns = [block.bn3.weight for layer in (model.layer1, model.layer4) for block in layer]
    assert all(torch.count_nonzero(w) == 0 for w in last_bns)


def test_imagenet_weights_offline_say_what_to_do_in_one_line(cli, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # nothing cached
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # a closed port: no download
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    r = cli("train", str(tiny), "--model", "mobilenet_v3_small-frozen", "--epochs", "1", "--out", str(tmp_path / "r"))
    assert r.code != 0
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--weights none" in lines[0] and "mobilenet_v3_small" in lines[0], r.err


def test_squeezenet_frozen_trains_without_the_levers_its_head_cannot_have(cli, tiny, tmp_path):
    """squeezenet's class scores come from a 1x1 convolution followed by a ReLU and a pooling:
    forward(x) is not head(rest(x)), so it registers no head= and trains through its own forward."""
    from cvkit.build import model_spec

    assert model_spec("squeezenet1_1-frozen").head is None and model_spec("vgg11-frozen").head == "classifier.6"
    r = cli("train", str(tiny), "--model", "squeezenet1_1-frozen", "--weights", "none", "--epochs", "1",
            "--batch-size", "3", "--workers", "0", "--out", str(tmp_path / "run"), "--json")
    assert r.code == 0, r.err
    record = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["run"]
    assert record["frozen_backbone"] is False and record["cached_features"] is False


# --- timm ---------------------------------------------------------------------------------------

TIMM_MODELS = ["resnet10t", "vit_tiny_patch16_224", "mobilenetv3_small_050"]  # a resnet, a ViT, a mobilenet


def test_the_timm_table_is_what_the_installed_timm_says():
    timm = pytest.importorskip("timm")
    from timm.models import get_pretrained_cfg

    from cvkit_plugins.timm_table import TABLE as TIMM

    assert sorted(TIMM) == sorted(timm.list_models())
    for name in TIMM_MODELS + ["convnext_atto", "efficientnet_b0", "deit_tiny_distilled_patch16_224"]:
        cfg = get_pretrained_cfg(name)
        crop, resize, interpolation, mean, std, head = TIMM[name]
        assert crop == cfg.input_size[-1] and resize == int(crop / cfg.crop_pct) and interpolation == cfg.interpolation
        assert mean == tuple(cfg.mean) and std == tuple(cfg.std)
        assert head == (cfg.classifier if isinstance(cfg.classifier, str) else None)  # distilled: two heads


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_models_train_evaluate_and_predict_offline(cli, tiny, tmp_path, name):
    pytest.importorskip("timm")
    run = tmp_path / "run"
    r = cli("train", str(tiny), "--model", f"timm/{name}-finetune", "--weights", "none", "--epochs", "1",
            "--batch-size", "3", "--workers", "0", "--out", str(run), "--json")
    assert r.code == 0, r.err
    assert cli("eval", "-c", str(run), "--json").code == 0
    pr = cli("predict", str(tiny / "val"), "-c", str(run), "--json")
    assert pr.code == 0 and len(json.loads(pr.out)) == 3, pr.err


def test_timm_frozen_trains_only_its_head():
    pytest.importorskip("timm")
    from cvkit.build import build_model

    model = build_model("timm/resnet10t-frozen", num_classes=3, weights="none")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 176, 176)), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"fc.weight", "fc.bias"}


def test_without_timm_one_line_says_how_to_install_it(cli, tiny, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm fails
    r = cli("train", str(tiny), "--model", "timm/resnet10t-frozen", "--weights", "none", "--out", str(tmp_path / "r"))
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert r.code == 2 and len(lines) == 1 and 'pip install "cvkit[timm]"' in lines[0], r.err


def test_timm_pretrained_weights_offline_is_one_line(tiny, tmp_path):
    pytest.importorskip("timm")
    from conftest import run_cvkit

    # a fresh process: huggingface_hub reads HF_HUB_OFFLINE when it is imported
    r = run_cvkit("train", str(tiny), "--model", "timm/resnet10t-frozen", "--out", str(tmp_path / "r"),
                  env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "--weights none" in lines[0] and "resnet10t" in lines[0], r.stderr
