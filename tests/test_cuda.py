"""CUDA paths, on a CUDA GPU only (``pytest -m cuda``; benchmarks/gpu_check.py runs them on a lent GPU).

Without a GPU every test here is skipped with that reason. Each trains on a tiny drawn set.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import train_run
from cvkit_plugins.demo import make_shapes

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]
FAST = ("--model", "net", "--epochs", "1", "--lr", "0.05", "--workers", "0", "--device", "cuda")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda") / "shapes"
    make_shapes(root, train_per_class=16, val_per_class=4, size=32, seed=3)
    return root


def test_auto_picks_the_gpu_and_a_half_precision():
    from cvkit.device import resolve_device, resolve_precision

    device = resolve_device("auto")
    assert device.type == "cuda"
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert resolve_precision("auto", device) == expected
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_fp16_trains_with_the_grad_scaler(shapes, tmp_path):
    out = train_run(tmp_path / "fp16", str(shapes), *FAST, "--precision", "fp16")
    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert saved["run"]["device"].startswith("cuda") and saved["run"]["precision"] == "fp16"
    scaler = saved["scaler_state"]
    assert scaler and math.isfinite(scaler["scale"]) and scaler["scale"] > 0
    assert all(math.isfinite(v) for row in saved["history"] for k, v in row.items() if k.endswith("loss"))


def test_loaders_pin_memory_for_the_gpu(shapes):
    from torchvision import datasets, transforms

    from cvkit.data import make_loader

    ds = datasets.ImageFolder(str(shapes / "train"), transform=transforms.ToTensor())
    loader = make_loader(ds, batch_size=8, shuffle=False, workers=1, device=torch.device("cuda"))
    assert loader.pin_memory
    images, _ = next(iter(loader))
    assert images.is_pinned()
    cpu_loader = make_loader(ds, batch_size=8, shuffle=False, workers=0, device=torch.device("cpu"))
    assert not cpu_loader.pin_memory


def test_a_checkpoint_saved_on_the_gpu_predicts_the_same_on_the_cpu(cli, shapes, tmp_path):
    import json

    out = train_run(tmp_path / "gpu", str(shapes), *FAST)
    saved = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert saved["run"]["device"].startswith("cuda")
    results = {}
    for device in ("cuda", "cpu"):
        r = cli("predict", str(shapes / "val"), "--checkpoint", str(out), "--device", device,
                "--precision", "fp32", "--json")
        assert r.code == 0, r.err
        results[device] = json.loads(r.out)
    for a, b in zip(results["cuda"], results["cpu"]):
        assert a["path"] == b["path"]
        assert a["predictions"][0]["label"] == b["predictions"][0]["label"]
        assert abs(a["predictions"][0]["probability"] - b["predictions"][0]["probability"]) < 1e-3
