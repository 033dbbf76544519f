"""--tta for eval and predict: each image is run as it is and mirrored left to right, and the
prediction is the mean of the two passes' softmax probabilities (checkpoint, and .onnx without torch)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import no_torch_python, train_run, words
from cvkit_plugins.demo import make_shapes

CLASSES = ["circle", "square", "star"]
FP32 = ("--precision", "fp32", "--device", "cpu")



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta") / "shapes"
    make_shapes(root, train_per_class=3, val_per_class=3, size=32, seed=11, classes=tuple(CLASSES))
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A net run whose best.pt is made confident: one short epoch leaves logits of about 0.05, where
    averaging probabilities and averaging logits agree to 1e-6; its last layer is scaled so that
    they differ clearly and the mirror changes the probabilities by hundredths."""
    import torch

    from cvkit.checkpoint import save_checkpoint

    out = train_run(tmp_path_factory.mktemp("runs") / "net", str(data), "--model", "net", "--weights", "none",
                    "--epochs", "1", "--batch-size", "3", "--workers", "0", "--seed", "1")
    ckpt = torch.load(out / "best.pt", weights_only=False)
    for key in ("fc3.weight", "fc3.bias"):  # logits x150
        ckpt["model_state"][key] = ckpt["model_state"][key] * 150
    save_checkpoint(ckpt, out / "best.pt")
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Noise pictures of several sizes: nothing in them is symmetric, so a mirror changes the logits."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(5)
    for i, (w, h) in enumerate([(40, 36), (32, 32), (50, 41), (33, 60)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def probabilities_by_hand(run: Path, paths) -> tuple:
    """(plain, flipped) softmax probabilities, N x classes, from the checkpoint, unfused, in fp32."""
    import torch

    from cvkit.images import load_image
    from cvkit.inference import restore_model

    model, _, _, transform, _ = restore_model(str(run), device=torch.device("cpu"), fuse=False)
    x = torch.stack([transform(load_image(p)) for p in paths])
    with torch.inference_mode():
        return model(x).softmax(1), model(x.flip(-1)).softmax(1)


def by_label(rows: list[dict]) -> dict:
    return {r["path"]: {p["label"]: p["probability"] for p in r["predictions"]} for r in rows}


def predict_json(cli, *args) -> list[dict]:
    r = cli("predict", *args, "--json", "--top-k", "3")
    assert r.code == 0, r.err
    return json.loads(r.out)


def test_predict_tta_is_the_mean_of_the_plain_and_mirrored_probabilities(cli, run, photos):
    import torch

    rows = predict_json(cli, str(photos), "-c", str(run), "--tta", *FP32)
    paths = [r["path"] for r in rows]
    plain, flipped = probabilities_by_hand(run, paths)
    want = (plain + flipped) / 2
    # the test can fail: the mirror matters to this model, and so does averaging probabilities, not logits
    assert (plain - flipped).abs().max() > 0.01
    assert (want - ((plain.log() + flipped.log()) / 2).softmax(1)).abs().max() > 1e-3
    got = by_label(rows)
    for i, path in enumerate(paths):
        assert torch.allclose(torch.tensor([got[path][c] for c in CLASSES]), want[i], atol=1e-5), path
    assert all(r["tta"] == ["identity", "hflip"] for r in rows)
    without = by_label(predict_json(cli, str(photos), "-c", str(run), *FP32))
    assert max(abs(without[p][c] - got[p][c]) for p in paths for c in CLASSES) > 1e-4
    assert all("tta" not in r for r in predict_json(cli, str(photos), "-c", str(run), *FP32))


def test_eval_tta_scores_the_mean_probabilities(cli, run, data):
    import torch

    from cvkit.build import build_loss

    paths = sorted((data / "val").glob("*/*.png"))
    targets = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    plain, flipped = probabilities_by_hand(run, paths)
    mean = (plain + flipped) / 2
    r = cli("eval", str(data), "-c", str(run), "--json", "--tta", "--workers", "0", *FP32)
    assert r.code == 0, r.err
    got = json.loads(r.out)
    assert got["tta"] == ["identity", "hflip"] and got["images"] == len(paths)
    assert got["accuracy"] == pytest.approx(int((mean.argmax(1) == targets).sum()) / len(paths), abs=1e-12)
    # the run's own loss (cross-entropy, maybe label-smoothed) of the log of the mean probabilities:
    # for plain cross-entropy, their negative log-likelihood
    config = torch.load(run / "best.pt", weights_only=False)["config"]
    loss_fn = build_loss(config.get("loss") or "cross-entropy", options=(config.get("options") or {}).get("loss"))
    assert got["loss"] == pytest.approx(float(loss_fn(mean.log(), targets)), rel=1e-5)
    matrix = [[0] * len(CLASSES) for _ in CLASSES]
    for t, p in zip(targets.tolist(), mean.argmax(1).tolist()):
        matrix[t][p] += 1
    assert got["confusion_matrix"] == matrix
    plain_eval = json.loads(cli("eval", str(data), "-c", str(run), "--json", "--workers", "0", *FP32).out)
    assert plain_eval["tta"] is None
    assert plain_eval["loss"] != pytest.approx(got["loss"], rel=1e-4)  # the averaging is what was scored


@pytest.fixture(scope="module")
def onnx_file(run) -> str:
    """The run exported to .onnx (skipped without the export extra)."""
    from cvkit.cli import main
    from cvkit.plugins import set_plugins

    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    set_plugins(None)
    try:
        main(["export", str(run), "--format", "onnx", "--out", str(run / "model.onnx")])
    except SystemExit as exc:
        assert not exc.code, f"cvkit export: exit {exc.code}"
    return str(run / "model.onnx")


def test_predict_tta_from_onnx_without_torch_matches_the_checkpoint(cli, run, photos, onnx_file, tmp_path):
    done = subprocess.run([*no_torch_python(tmp_path), "-m", "cvkit", "predict", str(photos), "-c", onnx_file,
                           "--tta", "--json", "--top-k", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "TTA: identity + hflip" in words(done.stderr)  # the summary line, on stderr under --json
    got = json.loads(done.stdout)
    want = predict_json(cli, str(photos), "-c", str(run), "--tta", *FP32)
    assert [r["path"] for r in got] == [r["path"] for r in want]
    assert all(r["tta"] == ["identity", "hflip"] for r in got)
    got, want = by_label(got), by_label(want)
    for path in want:
        for label, p in want[path].items():
            assert got[path][label] == pytest.approx(p, abs=1e-3), (path, label)


def test_eval_tta_from_onnx_matches_the_checkpoint(cli, run, data, onnx_file):
    want = json.loads(cli("eval", str(data), "-c", str(run), "--json", "--tta", "--workers", "0", *FP32).out)
    r = cli("eval", str(data), "-c", onnx_file, "--json", "--tta", "--workers", "0")
    assert r.code == 0, r.err
    got = json.loads(r.out)
    assert got["tta"] == ["identity", "hflip"] and got["confusion_matrix"] == want["confusion_matrix"]
    assert got["accuracy"] == want["accuracy"] and got["loss"] == pytest.approx(want["loss"], rel=1e-3)


def test_the_flag_in_tables_csv_and_help(cli, run, data, photos):
    r = cli("predict", str(photos), "-c", str(run), "--tta")
    assert r.code == 0, r.err
    assert "TTA: identity + hflip" in words(r.out)
    assert "TTA" not in cli("predict", str(photos), "-c", str(run)).out
    r = cli("predict", str(photos), "-c", str(run), "--tta", "--csv")
    assert r.code == 0 and r.out.splitlines()[0] == "path,rank,label,probability", r.err
    assert len(r.out.splitlines()) == 1 + 4 * 3
    r = cli("eval", str(data), "-c", str(run), "--tta", "--workers", "0")
    assert r.code == 0, r.err
    assert "TTA: identity + hflip" in words(r.out).split("accuracy")[0]  # on the header line
    for command in ("eval", "predict"):
        r = cli(command, "--help")
        assert "--tta" in r.out and "mirrored" in words(r.out), command


def test_what_cannot_work_says_so_in_one_line(cli, run, data, tmp_path):
    import torch

    from cvkit.errors import UsageError
    from cvkit.inference import with_tta

    with pytest.raises(UsageError, match=r"--tta: unknown view 'vflip' \(known: identity, hflip\)"):
        with_tta(torch.nn.Identity(), ["identity", "vflip"])
    mse = train_run(tmp_path / "mse", str(data), "--model", "net", "--weights", "none", "--epochs", "1",
                    "--batch-size", "3", "--workers", "0", "--loss", "mse")
    r = cli("eval", str(data), "-c", str(mse), "--tta", "--workers", "0")
    assert r.code != 0 and "--tta: the run's loss 'mse'" in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
