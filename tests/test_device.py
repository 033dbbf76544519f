"""`cvkit device`, resolve_device and resolve_precision."""

from __future__ import annotations

import json

import pytest
import torch

import cvkit
from cvkit import device as dev
from cvkit.errors import UsageError


@pytest.fixture
def no_gpu(monkeypatch):
    """Pretend this machine has neither CUDA nor MPS, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)


def test_device_json(cli):
    r = cli("device", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    import torchvision

    assert report["versions"]["cvkit"] == cvkit.__version__
    assert report["versions"]["torch"] == torch.__version__
    assert report["versions"]["torchvision"] == torchvision.__version__
    assert isinstance(report["cpu"]["cores"], int) and report["cpu"]["cores"] >= 1
    assert report["cpu"]["cores"] == dev.cpu_count()
    assert isinstance(report["cpu"]["native_bf16"], bool)
    assert report["cpu"]["native_bf16"] == dev.cpu_has_native_bf16()
    assert report["cuda"]["available"] is torch.cuda.is_available()
    assert report["cuda"]["device_count"] == len(report["cuda"]["devices"])
    assert isinstance(report["mps"]["available"], bool)
    auto = report["auto"]
    assert auto["device"] in ("cpu", "cuda", "mps")
    assert auto["precision"] in ("fp32", "bf16", "fp16")
    if not torch.cuda.is_available() and not report["mps"]["available"]:
        assert auto["device"] == "cpu"
        assert auto["precision"] == ("bf16" if report["cpu"]["native_bf16"] else "fp32")


@pytest.mark.parametrize("bf16", [True, False])
def test_device_json_auto_on_cpu(cli, no_gpu, monkeypatch, bf16):
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: bf16)
    import cvkit.commands.device as cmd

    monkeypatch.setattr(cmd, "cpu_has_native_bf16", lambda: bf16)
    r = cli("device", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["cuda"]["available"] is False and report["cuda"]["devices"] == []
    assert report["mps"]["available"] is False
    assert report["cpu"]["native_bf16"] is bf16
    assert report["auto"] == {"device": "cpu", "precision": "bf16" if bf16 else "fp32"}


def test_device_table_renders(cli, no_gpu):
    r = cli("device")
    assert r.code == 0, r.err
    assert "auto picks" in r.out
    assert "cpu with" in r.out
    assert f"cvkit {cvkit.__version__}" in r.out and "torch" in r.out
    assert "CPU native bf16" in r.out
    assert r.err == ""


def test_resolve_device_auto_and_cpu(no_gpu):
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device(None) == torch.device("cpu")
    assert dev.resolve_device(" CPU ") == torch.device("cpu")


def test_resolve_device_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("name, words", [
    ("cuda", ["--device cuda", "CUDA is not available"]),
    ("cuda:1", ["--device cuda:1", "CUDA is not available"]),
    ("mps", ["--device mps", "MPS is not available"]),
    ("gpu", ["'gpu'", "not a device"]),
    ("meta", ["'meta'", "unsupported device type"]),
])
def test_resolve_device_errors(no_gpu, name, words):
    with pytest.raises(UsageError) as info:
        dev.resolve_device(name)
    for word in words:
        assert word in str(info.value)


def test_resolve_device_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dev.resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(UsageError, match="only 1 CUDA device"):
        dev.resolve_device("cuda:3")


def test_cli_device_cuda_without_cuda_is_exit_2(cli, no_gpu):
    r = cli("inspect-grad", "--device", "cuda")
    assert r.code == 2
    assert r.err.strip() == "cvkit: error: --device cuda: CUDA is not available here (see `cvkit device`)"


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_resolve_precision_auto_on_cpu(monkeypatch, bf16, expected):
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: bf16)
    cpu = torch.device("cpu")
    assert dev.resolve_precision("auto", cpu) == expected
    assert dev.resolve_precision(None, cpu) == expected
    # explicit choices the CPU can run are kept either way
    assert dev.resolve_precision("fp32", cpu) == "fp32"
    assert dev.resolve_precision("BF16", cpu) == "bf16"


@pytest.mark.parametrize("bf16", [True, False])
def test_resolve_precision_fp16_on_cpu_is_usage_error(monkeypatch, bf16):
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: bf16)
    with pytest.raises(UsageError, match="fp16 is for CUDA GPUs"):
        dev.resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize("name", ["fp64", "half", "float32", "int8"])
def test_resolve_precision_bad_name(name):
    with pytest.raises(UsageError) as info:
        dev.resolve_precision(name, torch.device("cpu"))
    assert repr(name) in str(info.value) and "auto, fp32, bf16, fp16" in str(info.value)


@pytest.mark.parametrize("bf16_ok, auto", [(True, "bf16"), (False, "fp16")])
def test_resolve_precision_on_cuda(monkeypatch, bf16_ok, auto):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Old GPU")
    cuda = torch.device("cuda")
    assert dev.resolve_precision("auto", cuda) == auto
    assert dev.resolve_precision("fp16", cuda) == "fp16"
    if bf16_ok:
        assert dev.resolve_precision("bf16", cuda) == "bf16"
    else:
        with pytest.raises(UsageError, match="Old GPU has no bf16"):
            dev.resolve_precision("bf16", cuda)


def test_cpu_has_native_bf16_reads_flags(monkeypatch):
    monkeypatch.setattr(dev, "cpu_flags", lambda: {"sse2", "avx2"})
    assert dev.cpu_has_native_bf16() is False
    monkeypatch.setattr(dev, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert dev.cpu_has_native_bf16() is True
    monkeypatch.setattr(dev, "cpu_flags", lambda: {"fp", "asimd", "bf16"})
    assert dev.cpu_has_native_bf16() is True
