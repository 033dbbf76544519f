"""Bad input is one line on stderr and an exit code, never a traceback; bugs keep their traceback."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import urllib.error

import pytest
import torch

from conftest import REPO


def one_error(r, code: int, *words: str, notice: str | None = None) -> str:
    """The one error line; ``notice``: the prefix of progress lines allowed before it."""
    assert r.code == code, (r.code, r.err)
    assert "Traceback" not in r.err
    lines = [line for line in r.err.splitlines()
             if line.strip() and not (notice and line.startswith(notice))]
    assert len(lines) == 1, r.err
    assert lines[0].startswith("cvkit: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert r.out == ""
    return lines[0]


class Evil:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _net_state(num_classes: int = 10, seed: int = 0) -> dict:
    from cvkit.build import build_model

    torch.manual_seed(seed)
    return build_model("net", num_classes=num_classes, weights="none").state_dict()


# --- images ----------------------------------------------------------------------------------------

def test_missing_image(cli, tmp_path):
    path = tmp_path / "nowhere" / "cat.png"
    one_error(cli("inspect-grad", "--image", str(path)), 3, str(path), "no such file")


def test_text_file_named_png(cli, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    one_error(cli("inspect-grad", "--image", str(path)), 3, str(path), "not a readable image")


def test_directory_as_image(cli, tmp_path):
    one_error(cli("inspect-grad", "--image", str(tmp_path)), 3, str(tmp_path))


# --- weights files ---------------------------------------------------------------------------------

def test_missing_weights_file(cli, tmp_path):
    path = tmp_path / "gone.pt"
    one_error(cli("inspect-grad", "--weights", str(path)), 4, f"--weights {path}: no such file")


@pytest.mark.parametrize("content", [b"hello, I am text\n", b"\x00\x01garbage\xff" * 10, b""])
def test_garbage_weights_file(cli, tmp_path, content):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    one_error(cli("inspect-grad", "--weights", str(path)), 4, str(path), "not a cvkit checkpoint")


def test_truncated_weights_file(cli, tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(_net_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    one_error(cli("inspect-grad", "--weights", str(path)), 4, str(path), "not a cvkit checkpoint")


@pytest.mark.parametrize("obj, words", [
    ({"a": 1}, ["no tensors by name"]),
    ({}, ["no tensors by name"]),
    ([torch.zeros(3)], ["no tensors by name"]),
    ({"conv1.weight": torch.zeros(6, 1, 3, 3)}, ["do not fit", "missing conv1.bias"]),
])
def test_weights_without_a_usable_state_dict(cli, tmp_path, obj, words):
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    one_error(cli("inspect-grad", "--weights", str(path)), 4, str(path), *words)


def test_resnet_weights_do_not_fit_net(cli, tmp_path):
    from cvkit.build import build_model

    path = tmp_path / "resnet.pt"
    torch.save(build_model("resnet18-finetune", num_classes=10, weights="none").state_dict(), path)
    line = one_error(cli("inspect-grad", "--model", "net", "--weights", str(path)), 4,
                     str(path), "do not fit")
    assert "missing conv1.bias" in line or "conv1.weight has shape" in line


def test_net_weights_with_other_class_count_load_without_head(cli, tmp_path):
    from cvkit.build import build_model

    five = _net_state(num_classes=5, seed=1)
    path = tmp_path / "net5.pt"
    torch.save(five, path)
    r = cli("inspect-grad", "--model", "net", "--num-classes", "10", "--weights", str(path), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["output"]["shape"] == [1, 10]

    model = build_model("net", num_classes=10, weights=str(path))
    state = model.state_dict()
    for key, value in five.items():
        if key.startswith("fc3."):
            assert state[key].shape[0] == 10  # fresh head for 10 classes
        else:
            assert torch.equal(state[key], value), key


def test_net_weights_round_trip_exactly(tmp_path):
    from cvkit.build import build_model

    saved = _net_state(seed=2)
    path = tmp_path / "net.pt"
    torch.save(saved, path)
    torch.manual_seed(99)  # a different fresh initialisation underneath
    loaded = build_model("net", num_classes=10, weights=str(path)).state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


@pytest.mark.parametrize("wrap", ["checkpoint", "state_dict"])
def test_weights_inside_a_checkpoint(tmp_path, wrap):
    from cvkit.build import build_model
    from cvkit.checkpoint import FORMAT, save_checkpoint

    saved = _net_state(seed=3)
    payload = ({"format": FORMAT, "format_version": 1, "model_state": saved} if wrap == "checkpoint"
               else {"state_dict": saved, "epoch": 3})
    path = save_checkpoint(payload, tmp_path / "ck.pt")
    loaded = build_model("net", num_classes=10, weights=str(path)).state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_net_has_no_imagenet_weights(cli):
    one_error(cli("inspect-grad", "--model", "net", "--weights", "imagenet"), 2,
              "--weights none", "--weights PATH")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network and an empty torch cache: any download fails like it does offline."""
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return calls


@pytest.mark.parametrize("model", ["resnet18-finetune", "resnet18-frozen"])
def test_imagenet_weights_offline(cli, offline, model):
    line = one_error(cli("inspect-grad", "--model", model, "--weights", "imagenet"), 4,
                     "--weights imagenet", "--weights none", "--weights PATH", "URLError")
    assert "resnet18" in line
    assert offline and offline[0].startswith("https://")  # it did try, through torch.hub


def test_imagenet_is_the_resnet_default(cli, offline):
    one_error(cli("inspect-grad", "--model", "resnet18-frozen", "--json"), 4, "--weights none")


def test_malicious_pickle_never_runs(cli, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": Evil(marker)}, path)
    assert not marker.exists()
    line = one_error(cli("inspect-grad", "--weights", str(path)), 4, str(path), "refused")
    assert "could run code" in line
    assert not marker.exists()
    r = cli("inspect-grad", "--model", "resnet18-frozen", "--weights", str(path))
    assert r.code == 4 and not marker.exists()


def test_malicious_pickle_would_run_with_an_unsafe_load(tmp_path):
    """The check above means something: an unsafe load of the same file does create the marker."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"payload": Evil(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_plain_pickle_is_not_a_checkpoint(cli, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"payload": Evil(marker)}, f, protocol=2)
    r = cli("inspect-grad", "--weights", str(path))
    assert r.code == 4 and str(path) in r.err and "Traceback" not in r.err
    assert not marker.exists()


# --- verbose and bugs --------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["--verbose", "-v", "env"])
def test_verbose_shows_the_traceback(cli, tmp_path, monkeypatch, how):
    path = tmp_path / "gone.pt"
    args = ["inspect-grad", "--weights", str(path)]
    if how == "env":
        monkeypatch.setenv("CVKIT_VERBOSE", "1")
    else:
        args.insert(0, how)
    r = cli(*args)
    assert r.code == 4
    assert "Traceback (most recent call last)" in r.err
    assert "CheckpointError" in r.err
    assert r.err.strip().splitlines()[-1] == f"cvkit: error: --weights {path}: no such file"


def test_a_bug_keeps_its_traceback_in_process(cli, monkeypatch):
    import cvkit.commands.inspect_grad as module

    def broken(**kwargs):
        raise RuntimeError("kaboom, a bug")

    monkeypatch.setattr(module, "inspect_grad", broken)
    with pytest.raises(RuntimeError, match="kaboom, a bug"):
        cli("inspect-grad")


def test_a_bug_keeps_its_traceback_in_a_fresh_process():
    code = (
        "import cvkit.commands.inspect_grad as m\n"
        "def broken(**kwargs):\n"
        "    raise RuntimeError('kaboom, a bug')\n"
        "m.inspect_grad = broken\n"
        "from cvkit.cli import main\n"
        "main(['inspect-grad'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert "RuntimeError" in proc.stderr and "kaboom, a bug" in proc.stderr
    assert "cvkit: error:" not in proc.stderr
