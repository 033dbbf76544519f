"""Issue 5: each speed lever keeps results the same (no timing here: see benchmarks/)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cvkit_plugins.demo import make_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("levers") / "shapes"
    make_shapes(root, train_per_class=3, val_per_class=2, size=32, seed=6)
    return root


def _train(cli, data, out, *args):
    r = cli("train", str(data), "--epochs", "2", "--batch-size", "4", "--workers", "0", "--lr", "0.01",
            "--out", str(out), "--json", *args)
    assert r.code == 0, r.err
    return json.loads(r.out), torch.load(out / "last.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("model, head", [("resnet18-frozen", "fc"), ("mobilenet_v3_small-frozen", "classifier.3"),
                                         ("efficientnet_b0-frozen", "classifier.1")])
def test_cached_backbone_features_train_the_same_head(cli, shapes, tmp_path, monkeypatch, model, head):
    # fp32: the uncached run goes through the fused backbone, whose rounding differs in bf16
    args = ["--model", model, "--weights", "none", "--transforms", "plain", "--precision", "fp32"]
    fast, cached = _train(cli, shapes, tmp_path / "cached", *args)
    monkeypatch.setenv("CVKIT_NO_CACHE", "1")
    slow, plain = _train(cli, shapes, tmp_path / "plain", *args)
    assert cached["run"]["cached_features"] is True and plain["run"]["cached_features"] is False
    for key in (f"{head}.weight", f"{head}.bias"):
        torch.testing.assert_close(cached["model_state"][key], plain["model_state"][key], rtol=1e-4, atol=1e-5)
    for key in cached["model_state"]:
        if not key.startswith(f"{head}."):  # the backbone is the same frozen tensors either way
            assert torch.equal(cached["model_state"][key], plain["model_state"][key]), key
    assert [round(h["val_accuracy"], 6) for h in cached["history"]] == [round(h["val_accuracy"], 6)
                                                                         for h in plain["history"]]


def test_no_feature_cache_with_random_augmentation(cli, shapes, tmp_path):
    _, ckpt = _train(cli, shapes, tmp_path / "aug", "--model", "resnet18-frozen", "--weights", "none",
                     "--epochs", "1")
    assert ckpt["run"]["cached_features"] is False and ckpt["run"]["transforms"] == "chapter"


def test_cached_samples_change_nothing(cli, shapes, tmp_path, monkeypatch):
    _, cached = _train(cli, shapes, tmp_path / "cached")
    monkeypatch.setenv("CVKIT_NO_CACHE", "1")
    _, plain = _train(cli, shapes, tmp_path / "plain")
    for key, value in cached["model_state"].items():
        assert torch.equal(value, plain["model_state"][key]), key
    assert cached["history"][-1]["val_loss"] == plain["history"][-1]["val_loss"]


@pytest.mark.parametrize("name", ["net", "resnet18-finetune"])
def test_channels_last_gives_the_same_outputs(name):
    from cvkit.accel import to_channels_last, use_channels_last
    from cvkit.build import build_model, model_spec

    torch.manual_seed(0)
    model = build_model(name, num_classes=5, weights="none").eval()
    x = torch.randn(2, *model_spec(name).input_size)
    with torch.inference_mode():
        expected = model(x)
        assert use_channels_last(model)
        to_channels_last(model)
        got = model(x)
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert set(model.state_dict()) == set(build_model(name, num_classes=5, weights="none").state_dict())


def test_reduced_jpeg_decoding_keeps_the_transform_input(tmp_path):
    from cvkit.build import build_transform, model_spec
    from cvkit.images import load_image

    x = np.linspace(0, 1, 1200)[None, :, None]
    y = np.linspace(0, 1, 900)[:, None, None]
    pixels = np.concatenate([x * 200 + y * 30, y * 180 + 20 + 0 * x, (1 - x) * 150 + 60 + 0 * y], 2)
    img = Image.fromarray(pixels.clip(0, 255).astype("uint8"))
    ImageDraw.Draw(img).ellipse((300, 200, 800, 700), fill=(200, 60, 40))
    path = tmp_path / "photo.jpg"
    img.save(path, quality=90)
    full = load_image(path)
    small = load_image(path, min_side=256)
    assert full.size == (1200, 900) and small.size == (600, 450) and min(small.size) >= 256
    assert load_image(path, min_side=600).size == (1200, 900)  # not twice the need: no reduction
    spec = model_spec("resnet18-frozen")
    tf = build_transform(spec, "chapter", train=False)
    a, b = tf(full), tf(small)
    assert a.shape == b.shape == (3, 224, 224)
    assert (a - b).abs().mean() < 0.05  # normalised units: the same picture, decoded at half scale


def test_dataset_factories_get_the_decode_hint(tmp_path):
    from cvkit.build import build_dataset, decode_min_side, model_spec

    for split in ("train", "val"):
        (tmp_path / split / "sky").mkdir(parents=True)
        Image.new("RGB", (1200, 900), (90, 140, 220)).save(tmp_path / split / "sky" / "a.jpg")
    hint = decode_min_side(model_spec("resnet18-frozen"))
    assert hint == 256
    reduced = build_dataset("imagefolder", str(tmp_path), split="train", transform=None, min_side=hint)
    full = build_dataset("imagefolder", str(tmp_path), split="train", transform=None)
    assert reduced[0][0].size == (600, 450) and full[0][0].size == (1200, 900)


def test_workers_auto_follows_the_input_size(monkeypatch):
    import cvkit.device
    from cvkit.data import resolve_workers

    monkeypatch.setattr(cvkit.device, "cpu_count", lambda: 2)
    assert resolve_workers("auto", 5000, (1, 32, 32)) == 0  # tiny inputs: the main process is faster
    assert resolve_workers("auto", 240, (3, 224, 224)) == 2  # decoding photos overlaps the model
    assert resolve_workers("auto", 20, (3, 224, 224)) == 0  # too few images to pay for the start
    monkeypatch.setattr(cvkit.device, "cpu_count", lambda: 16)
    assert resolve_workers("auto", 240, (3, 224, 224)) == 8
    assert resolve_workers(3, 10, (1, 32, 32)) == 3  # a number is taken as given


def _frozen_resnet(seed=0):
    from cvkit_plugins.resnet_models import FrozenBackboneResNet18

    torch.manual_seed(seed)
    model = FrozenBackboneResNet18()
    model.fc = torch.nn.Linear(512, 3)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fc."))
    for m in model.modules():  # BatchNorm statistics that are not the identity, so fusing matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_frozen_backbone_trains_the_head_the_same(channels_last):
    from cvkit.accel import frozen_backbone_model, frozen_head, to_channels_last

    model = _frozen_resnet()
    if channels_last:
        to_channels_last(model)
    assert frozen_head(model, "fc") == "fc"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = frozen_backbone_model(model, "fc")
    assert fast.head is model.fc  # the optimizer's parameters are the model's own
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.backbone.modules())  # folded
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 1])
    model.train()
    fast.train()
    torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)
    grads = []
    for m in (model, fast):
        model.fc.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        grads.append(model.fc.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing moved
    assert not any(p.requires_grad for p in fast.backbone.parameters())


def test_a_backbone_whose_batchnorm_trains_is_not_frozen():
    from cvkit.accel import frozen_head
    from cvkit_plugins.resnet_models import ResNet18

    model = ResNet18()  # requires_grad off outside fc, but train() would move BatchNorm statistics
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fc."))
    assert frozen_head(model, "fc") is None
    assert frozen_head(_frozen_resnet(), None) is None
    assert frozen_head(_frozen_resnet(), "head") is None  # no such attribute


def test_frozen_resnet_with_augmentation_uses_the_fused_backbone(cli, shapes, tmp_path):
    _, ckpt = _train(cli, shapes, tmp_path / "aug", "--model", "resnet18-frozen", "--weights", "none",
                     "--epochs", "1")
    assert ckpt["run"]["frozen_backbone"] is True
    assert not any("backbone" in k for k in ckpt["model_state"])  # the model's own keys
    r = cli("eval", "--checkpoint", str(tmp_path / "aug" / "best.pt"), str(shapes / "val"), "--json")
    assert r.code == 0, r.err


def test_decoded_pictures_kept_in_memory_change_nothing(cli, shapes, tmp_path, monkeypatch):
    args = ["--model", "net", "--transforms", "chapter"]  # random augmentation: no sample cache
    _, kept = _train(cli, shapes, tmp_path / "kept", *args)
    monkeypatch.setenv("CVKIT_NO_CACHE", "1")
    _, plain = _train(cli, shapes, tmp_path / "plain", *args)
    assert kept["run"]["decoded_images_kept"] == 12 and plain["run"]["decoded_images_kept"] == 0
    for key, value in kept["model_state"].items():
        assert torch.equal(value, plain["model_state"][key]), key
    assert kept["history"][-1]["val_loss"] == plain["history"][-1]["val_loss"]


def test_kept_pictures_are_handed_out_as_copies_within_budget(shapes):
    from cvkit.accel import cache_decoded_images
    from cvkit_plugins.imagefolder import CvkitImageFolder

    ds = CvkitImageFolder(shapes / "train")
    assert cache_decoded_images([ds], budget=10) is None  # 12 pictures of 32x32 do not fit 10 bytes
    stats = cache_decoded_images([ds])
    assert stats["images"] == 12 and stats["bytes"] == 12 * 32 * 32 * 3
    first, _ = ds[0]
    first.paste((255, 0, 0), (0, 0, 32, 32))  # a transform that draws on its input
    again, _ = ds[0]
    assert again.getpixel((0, 0)) != (255, 0, 0)
    from torch.utils.data import Subset

    assert cache_decoded_images([Subset(CvkitImageFolder(shapes / "train"), [0, 1])])["images"] == 2
    assert cache_decoded_images([list(range(3))]) is None  # not a DatasetFolder
