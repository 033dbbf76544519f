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
def test_cached_backbone_features_train_the_same_head(cli, shapes, tmp_path, monkeypatch):
    args = ["--model", "resnet18-frozen", "--weights", "none", "--transforms", "plain"]
    fast, cached = _train(cli, shapes, tmp_path / "cached", *args)
    monkeypatch.setenv("CVKIT_NO_CACHE", "1")
    slow, plain = _train(cli, shapes, tmp_path / "plain", *args)
    assert cached["run"]["cached_features"] is True and plain["run"]["cached_features"] is False
    for key in ("fc.weight", "fc.bias"):
        torch.testing.assert_close(cached["model_state"][key], plain["model_state"][key], rtol=1e-4, atol=1e-5)
    for key in cached["model_state"]:
        if not key.startswith("fc."):  # the backbone is the same frozen tensors either way
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
