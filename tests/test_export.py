"""cvkit export: every format round-trips for net, resnet18-finetune and mobilenet_v3_small-finetune,
--check passes, the artefacts load without cvkit, and predict runs an .onnx without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import no_torch_python, train_run
from cvkit_plugins.demo import make_shapes

MODELS = ["net", "resnet18-finetune", "mobilenet_v3_small-finetune"]
FORMATS = ["onnx", "torchscript", "pt2", "safetensors"]
CLASSES = ["circle", "square", "star"]

def run_without_torch(tmp_path, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*no_torch_python(tmp_path), *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("export") / "shapes"
    make_shapes(root, train_per_class=2, val_per_class=2, size=40, seed=3, classes=tuple(CLASSES))
    return root


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """One trained run per model, one short epoch each."""
    base = tmp_path_factory.mktemp("runs")
    return {m: train_run(base / m, str(data), "--model", m, "--weights", "none", "--epochs", "1",
                         "--batch-size", "3", "--workers", "0") for m in MODELS}


def export(cli, run: Path, fmt: str, *extra: str) -> dict:
    r = cli("export", str(run), "--format", fmt, "--json", *extra)
    assert r.code == 0, r.err
    return json.loads(r.out)


def torch_logits(run: Path, inputs):
    import torch

    from cvkit.inference import restore_model

    model = restore_model(str(run), device=torch.device("cpu"), fuse=False)[0]
    with torch.inference_mode():
        return model(torch.as_tensor(inputs)).numpy()


def assert_exported_and_checked(report: dict, run: Path, model: str) -> None:
    """What ``cvkit export RUN --check 4 --json`` must report: the file beside the run, no temporary
    left, the check passed on 4 of the run's own validation pictures, the model's metadata."""
    out = Path(report["out"])
    assert out.parent == run and out.is_file() and report["bytes"] == out.stat().st_size
    assert not [p for p in run.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    check = report["check"]
    assert check["passed"] and check["top1_agreement"] == 1.0 and check["images"] == 4, check
    assert check["inputs"].startswith("4 images of"), check  # the run's own validation pictures
    assert check["max_abs_logit_difference"] <= check["tolerance"]
    meta = report["metadata"]
    assert meta["classes"] == CLASSES and meta["model"] == model


# Every format for every model, except torchscript and pt2 of mobilenet_v3_small-finetune:
# test_torchscript_and_pt2_load_with_torch_alone exports exactly those two with the same --check 4
# and asserts the same report (assert_exported_and_checked) before loading them without cvkit.
LOADED_ELSEWHERE = {("torchscript", "mobilenet_v3_small-finetune"), ("pt2", "mobilenet_v3_small-finetune")}
CASES = [(fmt, model) for fmt in FORMATS for model in MODELS if (fmt, model) not in LOADED_ELSEWHERE]


@pytest.mark.parametrize("fmt, model", CASES)
def test_every_format_exports_and_passes_its_check(cli, runs, model, fmt):
    assert_exported_and_checked(export(cli, runs[model], fmt, "--check", "4"), runs[model], model)


def test_onnx_metadata_dynamic_batch_and_names(cli, runs):
    import numpy as np
    import onnx
    import onnxruntime as ort

    report = export(cli, runs["resnet18-finetune"], "onnx", "--out", str(runs["resnet18-finetune"] / "m.onnx"))
    proto = onnx.load(report["out"])
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["classes"] == CLASSES and props["input_size"] == [3, 224, 224]
    assert props["resize"] == 256 and props["crop"] == [224, 224] and props["interpolation"] == "bilinear"
    assert props["mean"] == pytest.approx([0.485, 0.456, 0.406]) and props["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert props["model"] == "resnet18-finetune" and "cvkit_version" in props
    session = ort.InferenceSession(report["out"], providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"] and [o.name for o in session.get_outputs()] == ["logits"]
    for batch in (1, 5):  # the batch dimension is not fixed
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        got = session.run(None, {"images": x})[0]
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, torch_logits(runs["resnet18-finetune"], x), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_torchscript_and_pt2_load_with_torch_alone(cli, runs, tmp_path, fmt):
    """A subprocess that never imports cvkit loads the file, reads its description and runs it.
    The export is also the matrix's (fmt, mobilenet_v3_small-finetune) case: --check 4 passes."""
    import numpy as np

    run = runs["mobilenet_v3_small-finetune"]
    report = export(cli, run, fmt, "--check", "4")
    assert_exported_and_checked(report, run, "mobilenet_v3_small-finetune")
    program = textwrap.dedent(f"""
        import json, sys
        import torch
        extra = {{"cvkit.json": ""}}
        if {fmt!r} == "torchscript":
            model = torch.jit.load(sys.argv[1], _extra_files=extra)
        else:
            model = torch.export.load(sys.argv[1], extra_files=extra).module()
        meta = json.loads(extra["cvkit.json"])
        x = torch.from_numpy(__import__("numpy").load(sys.argv[2]))
        with torch.no_grad():
            logits = model(x)
        assert "cvkit" not in sys.modules
        print(json.dumps({{"classes": meta["classes"], "crop": meta["crop"], "logits": logits.tolist()}}))
    """)
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "load.py").write_text(program)
    done = subprocess.run([sys.executable, str(tmp_path / "load.py"), report["out"], str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["classes"] == CLASSES and got["crop"] == [224, 224]
    np.testing.assert_allclose(np.array(got["logits"]), torch_logits(run, x), rtol=1e-3, atol=1e-4)


def test_safetensors_is_a_checkpoint_for_eval_and_predict_and_weights_for_train(cli, runs, data, tmp_path,
                                                                               monkeypatch):
    import torch

    run = runs["net"]
    file = Path(export(cli, run, "safetensors")["out"])
    assert file.read_bytes()[8:9] == b"{"  # a safetensors header, no pickle
    real_load = torch.load

    def refuse_pickle(path, *a, **k):
        assert not str(path).endswith(".safetensors"), "torch.load called on a .safetensors file"
        return real_load(path, *a, **k)

    monkeypatch.setattr(torch, "load", refuse_pickle)
    ev = [json.loads(cli("eval", str(data), "-c", c, "--json").out) for c in (str(run / "best.pt"), str(file))]
    assert ev[0]["accuracy"] == ev[1]["accuracy"] and ev[0]["loss"] == pytest.approx(ev[1]["loss"], rel=1e-5)
    pr = [json.loads(cli("predict", str(data / "val"), "-c", c, "--json").out) for c in (str(run / "best.pt"), str(file))]
    assert pr[0] == pr[1]
    r = cli("train", str(data), "--model", "net", "--weights", str(file), "--epochs", "1", "--workers", "0",
            "--out", str(tmp_path / "again"), "--json")
    assert r.code == 0, r.err
    r = cli("train", str(data), "--model", "resnet18-frozen", "--weights", str(file), "--epochs", "1",
            "--out", str(tmp_path / "other"))
    assert r.code != 0 and "a checkpoint of model 'net'" in r.err


def test_predict_from_onnx_imports_no_torch_and_matches_the_checkpoint(cli, runs, data, tmp_path):
    run = runs["resnet18-finetune"]
    onnx_file = export(cli, run, "onnx")["out"]
    done = run_without_torch(tmp_path, "-m", "cvkit", "predict", str(data / "val"), "-c", onnx_file, "--json",
                             "--top-k", "3")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    want = json.loads(cli("predict", str(data / "val"), "-c", str(run), "--json", "--top-k", "3",
                          "--precision", "fp32").out)
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for g, w in zip(got, want):
        assert [p["label"] for p in g["predictions"]][:1] == [p["label"] for p in w["predictions"]][:1]
        for a, b in zip(g["predictions"], w["predictions"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-3)
    csv = run_without_torch(tmp_path, "-m", "cvkit", "predict", str(data / "val"), "-c", onnx_file, "--csv")
    assert csv.returncode == 0 and csv.stdout.splitlines()[0] == "path,rank,label,probability", csv.stderr
    grid = tmp_path / "grid.png"
    shown = run_without_torch(tmp_path, "-m", "cvkit", "predict", str(data / "val"), "-c", onnx_file,
                              "--grid", str(grid))
    assert shown.returncode == 0 and grid.stat().st_size > 1000, shown.stderr


def test_eval_accepts_an_onnx_file(cli, runs, data):
    run = runs["net"]
    onnx_file = export(cli, run, "onnx")["out"]
    want = json.loads(cli("eval", str(data), "-c", str(run), "--json", "--precision", "fp32").out)
    got = cli("eval", str(data), "-c", onnx_file, "--json")
    assert got.code == 0, got.err
    got = json.loads(got.out)
    assert got["accuracy"] == want["accuracy"] and got["confusion_matrix"] == want["confusion_matrix"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-3) and got["checkpoint"] == onnx_file


# --- bad input: one line each, no partial file ------------------------------------------------------

def test_unknown_format_lists_the_formats(cli, runs):
    r = cli("export", str(runs["net"]), "--format", "tflite")
    assert r.code == 2 and "--format tflite" in r.err and "onnx, torchscript, pt2, safetensors" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_an_unwritable_out_leaves_nothing(cli, runs, tmp_path):
    (tmp_path / "a-file").write_text("x")  # a folder that cannot be made: even root cannot write there
    r = cli("export", str(runs["net"]), "--out", str(tmp_path / "a-file" / "m.onnx"))
    assert r.code == 4 and f"--out {tmp_path / 'a-file' / 'm.onnx'}: cannot write there" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    r = cli("export", str(runs["net"]), "--out", str(tmp_path))
    assert r.code == 2 and "is a directory" in r.err


def test_a_file_that_is_not_a_cvkit_checkpoint(cli, tmp_path):
    import torch

    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    r = cli("export", str(tmp_path / "plain.pt"))
    assert r.code == 4 and "not a cvkit checkpoint" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "plain.onnx").exists()


def test_an_onnx_without_cvkit_metadata_says_what_is_missing(cli, runs, data, tmp_path):
    import onnx

    proto = onnx.load(export(cli, runs["net"], "onnx")["out"])
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    r = cli("predict", str(data / "val"), "-c", str(tmp_path / "bare.onnx"))
    assert r.code == 4 and "not exported by cvkit" in r.err and "classes" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_a_model_the_exporter_refuses_is_named(cli, runs, monkeypatch, fake_dist, data, tmp_path):
    """A model with data-dependent control flow: torch.export refuses it, in one line naming the model."""
    fake_dist("branchy-model", {"branchy_model": textwrap.dedent("""
        import cvkit
        from torch import nn

        class Branchy(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.a, self.b = nn.Linear(3 * 8 * 8, num_classes), nn.Linear(3 * 8 * 8, num_classes)

            def forward(self, x):
                x = x.flatten(1)
                return self.a(x) if x.mean() > 0 else self.b(x)

        @cvkit.hookimpl
        def register_models(register):
            register("branchy", lambda num_classes, weights=None: Branchy(num_classes),
                     input_size=(3, 8, 8), mean=(0.5,) * 3, std=(0.5,) * 3, default_transforms="plain",
                     help="data-dependent")
    """)}, {"branchy": "branchy_model"})
    r = cli("train", str(data), "--model", "branchy", "--epochs", "1", "--workers", "0", "--out", str(tmp_path / "b"))
    assert r.code == 0, r.err
    r = cli("export", str(tmp_path / "b"), "--format", "pt2")
    assert r.code == 4 and "model 'branchy' cannot be exported as pt2" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert not list((tmp_path / "b").glob("*.pt2")) and not list((tmp_path / "b").glob(".*.tmp"))


@pytest.mark.parametrize("model", ["net", "resnet18-finetune"])
def test_the_docs_program_classifies_as_cvkit_does_without_torch(cli, runs, data, tmp_path, model):
    """docs/export.md's numpy + Pillow + onnxruntime program, run as written (torch unimportable),
    gives the top class and probability `cvkit predict` gives from the checkpoint."""
    import re

    from conftest import REPO

    program = re.search(r"```python\n(.*?)```", (REPO / "docs" / "export.md").read_text(), re.S).group(1)
    (tmp_path / "classify.py").write_text(program)
    onnx_file = export(cli, runs[model], "onnx", "--out", str(tmp_path / "m.onnx"))["out"]
    images = sorted(str(p) for p in (data / "val").rglob("*.png"))
    done = run_without_torch(tmp_path, str(tmp_path / "classify.py"), onnx_file, *images)
    assert done.returncode == 0, done.stderr
    got = [line.split("\t") for line in done.stdout.splitlines()]
    want = json.loads(cli("predict", *images, "-c", str(runs[model]), "--json", "--top-k", "1",
                          "--precision", "fp32").out)
    assert [g[0] for g in got] == [w["path"] for w in want] and len(got) == len(images) == 6
    for (_, label, probability), w in zip(got, want):
        assert label == w["predictions"][0]["label"]
        assert float(probability) == pytest.approx(w["predictions"][0]["probability"], abs=2e-4)


def test_int8_onnx_keeps_top1_and_says_so(cli, tmp_path):
    """--quantize int8 on a net trained for a few epochs: a smaller file of int8 operators, marked
    in its metadata, whose --check passes at 99% top-1 agreement (measured: 100 of 100 here, 199 of
    200 on the full demo set); other formats refuse --quantize in one line."""
    import onnx

    root = tmp_path / "shapes"
    make_shapes(root, train_per_class=100, val_per_class=25, size=32, seed=5)
    run = train_run(tmp_path / "run", str(root), "--model", "net", "--epochs", "8", "--recipe", "chapter", "--lr", "0.05",
                    "--batch-size", "16", "--workers", "0")
    learned = max(float(row.split(",")[4]) for row in (run / "metrics.csv").read_text().splitlines()[1:])
    assert learned >= 0.7  # a model that learned (0.89 when written), so its top-1 classes mean something
    q = export(cli, run, "onnx", "--quantize", "int8", "--out", str(tmp_path / "q.onnx"), "--check", "100")
    f = export(cli, run, "onnx", "--out", str(tmp_path / "f.onnx"))
    check = q["check"]  # export() asserted exit 0: --check passed
    assert check["images"] == 100 and check["tolerance"] is None and check["passed"]
    assert check["top1_agreement"] >= 0.99 and check["max_abs_logit_difference"] > 0, check  # int8 differs, a little
    proto = onnx.load(q["out"])
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert json.loads({p.key: p.value for p in proto.metadata_props}["quantization"]) == "int8"
    assert q["bytes"] < f["bytes"]
    r = cli("predict", str(root / "val"), "-c", q["out"], "--json")
    assert r.code == 0 and "cpu onnxruntime int8" in r.err, r.err  # the summary says what ran
    r = cli("export", str(run), "--format", "pt2", "--quantize", "int8")
    assert r.code == 2 and "--quantize int8: only int8, and only with --format onnx" in r.err


def test_without_the_export_extra_one_line_says_what_to_install(cli, runs, data, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    r = cli("export", str(runs["net"]), "--format", "onnx")
    assert r.code == 2 and r.err.strip() == 'cvkit: error: --format onnx needs onnxscript: pip install "cvkit[export]"'
    monkeypatch.setattr(importlib.util, "find_spec", real)
    onnx_file = export(cli, runs["net"], "onnx")["out"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    r = cli("predict", str(data / "val"), "-c", onnx_file)
    assert r.code == 4 and 'needs onnxruntime: pip install "cvkit[export]"' in r.err
    assert len(r.err.strip().splitlines()) == 1
