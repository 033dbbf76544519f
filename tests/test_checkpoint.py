"""cvkit.checkpoint: atomic saves, safe loads, and fitting weights into a model."""

from __future__ import annotations

import os

import pytest
import torch

from cvkit import checkpoint
from cvkit.checkpoint import (FORMAT, load_file, load_state_dict, load_weights_into, save_checkpoint)
from cvkit.errors import CheckpointError


def _payload(value: float = 1.0) -> dict:
    return {"format": FORMAT, "format_version": 1, "epoch": 3, "classes": ["a", "b"],
            "metrics": {"acc": 0.5}, "model_state": {"w": torch.full((2, 3), value), "b": torch.zeros(2)}}


def test_save_is_atomic_and_loads_weights_only(tmp_path):
    target = tmp_path / "runs" / "one" / "best.pt"  # parents are created
    assert save_checkpoint(_payload(), target) == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["best.pt"]  # no temp file left
    loaded = torch.load(target, weights_only=True)
    assert loaded["epoch"] == 3 and loaded["classes"] == ["a", "b"]
    assert torch.equal(loaded["model_state"]["w"], torch.full((2, 3), 1.0))


def test_save_replaces_an_existing_file(tmp_path):
    target = tmp_path / "last.pt"
    save_checkpoint(_payload(1.0), target)
    save_checkpoint(_payload(7.0), str(target))  # a str path works too
    assert os.listdir(tmp_path) == ["last.pt"]
    assert torch.load(target, weights_only=True)["model_state"]["w"][0, 0] == 7.0


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    save_checkpoint(_payload(1.0), target)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(_payload(9.0), target)
    assert str(target) in str(info.value) and "No space left on device" in str(info.value)
    assert os.listdir(tmp_path) == ["last.pt"]
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["model_state"]["w"][0, 0] == 1.0


def test_a_bug_while_saving_propagates_and_cleans_up(tmp_path, monkeypatch):
    def bug(obj, f, *args, **kwargs):
        raise TypeError("cannot pickle this")

    monkeypatch.setattr(torch, "save", bug)
    with pytest.raises(TypeError, match="cannot pickle this"):
        save_checkpoint(_payload(), tmp_path / "x.pt")
    assert os.listdir(tmp_path) == []


def test_save_into_a_read_only_folder(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable (see the stand-in below)")
        target = folder / "best.pt"
        with pytest.raises(CheckpointError) as info:
            save_checkpoint(_payload(), target)
        assert str(target) in str(info.value) and "cannot write checkpoint" in str(info.value)
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o755)


def test_save_when_the_folder_refuses_new_files(tmp_path, monkeypatch):
    """What a read-only folder does, also when the tests run as root."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    target = tmp_path / "best.pt"
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(_payload(), target)
    assert str(info.value) == f"{target}: cannot write checkpoint (Permission denied)"
    assert os.listdir(tmp_path) == []


def test_save_where_the_folder_is_a_file(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    target = blocker / "best.pt"
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(_payload(), target)
    assert str(target) in str(info.value) and "cannot write checkpoint" in str(info.value)
    assert "\n" not in str(info.value)


# --- loading -----------------------------------------------------------------------------------------

def test_load_file_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file") as info:
        load_file(tmp_path / "none.pt", option="--weights")
    assert str(info.value).startswith(f"--weights {tmp_path / 'none.pt'}")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_file(tmp_path)
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(CheckpointError, match=r"empty file"):
        load_file(empty)
    text = tmp_path / "text.pt"
    text.write_text("not torch\n")
    with pytest.raises(CheckpointError, match="not a cvkit checkpoint or state dict") as info:
        load_file(text)
    assert str(text) in str(info.value) and "\n" not in str(info.value)


def test_load_state_dict_accepts_three_layouts(tmp_path):
    state = {"w": torch.ones(2), "b": torch.zeros(1)}
    for name, obj in {"plain": state, "wrapped": {"state_dict": state, "epoch": 1},
                      "checkpoint": {"format": FORMAT, "model_state": state}}.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        got = load_state_dict(path)
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state), name


def test_load_state_dict_reads_safetensors_without_pickle(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    state = {"w": torch.randn(2, 3), "b": torch.zeros(2)}
    path = tmp_path / "weights.safetensors"
    save_file(state, str(path), metadata={"model": "net"})

    def no_pickle(*a, **k):
        raise AssertionError("torch.load called for a .safetensors file")

    monkeypatch.setattr(torch, "load", no_pickle)
    got = load_state_dict(path)
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    assert checkpoint.load_safetensors(path, tensors=False) == ({}, {"model": "net"})


def test_a_broken_safetensors_file_is_one_line(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable .safetensors file") as info:
        load_state_dict(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="no such file"):
        load_state_dict(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("obj", [{"w": 1.0}, {1: torch.ones(1)}, {}, torch.ones(2),
                                 {"format": FORMAT, "model_state": None}])
def test_load_state_dict_rejects_non_state_dicts(tmp_path, obj):
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="no tensors by name"):
        load_state_dict(path, option="--weights")


class _Tiny(torch.nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.body = torch.nn.Linear(4, 5)
        self.head = torch.nn.Linear(5, classes)


def test_load_weights_into_exact(tmp_path):
    src, dst = _Tiny(), _Tiny()
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    assert load_weights_into(dst, path, head="head") == []
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())


def test_load_weights_into_drops_a_head_of_another_size(tmp_path):
    src, dst = _Tiny(classes=7), _Tiny(classes=3)
    fresh_head = dst.head.weight.detach().clone()
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    assert load_weights_into(dst, path, head="head.") == ["head.weight", "head.bias"]
    assert torch.equal(dst.body.weight, src.body.weight)
    assert torch.equal(dst.head.weight, fresh_head)


def test_load_weights_into_without_head_is_strict_about_shapes(tmp_path):
    src, dst = _Tiny(classes=7), _Tiny(classes=3)
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_weights_into(dst, path)
    assert "do not fit" in str(info.value)
    assert "head.weight has shape (7, 5), the model needs (3, 5)" in str(info.value)


def test_load_weights_into_names_missing_and_unexpected_keys(tmp_path):
    state = _Tiny().state_dict()
    state.pop("body.bias")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_weights_into(_Tiny(), path, option="--weights")
    message = str(info.value)
    assert message.startswith(f"--weights {path}: weights do not fit the model")
    assert "missing body.bias" in message and "unexpected extra.weight" in message


def test_format_constants():
    assert checkpoint.FORMAT == "cvkit-checkpoint" and checkpoint.FORMAT_VERSION >= 1
    assert checkpoint.is_checkpoint({"format": FORMAT}) and not checkpoint.is_checkpoint({"w": 1})


def test_saved_checkpoint_gets_the_usual_file_permissions(tmp_path):
    import os
    import stat

    from cvkit.checkpoint import save_checkpoint

    old = os.umask(0o022)
    try:
        path = save_checkpoint({"x": 1}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
