"""Training from WebDataset shards: the same data as the folder it came from, read once per epoch,
divided between the processes of a distributed run.

``cvkit data shard`` writes the shards; a test-only plugin wraps the ``webdataset`` format and logs
every sample each process yields (shard and key), so the test counts what each process saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cvkit
from cvkit_plugins.demo import make_shapes

pytest.importorskip("webdataset")

LOGGED = '''
import os

import cvkit
import cvkit_plugins.shards as shards

_records = shards._ShardReading.records


def records(self, epoch, *, rank=0, world=1, worker=0, workers=1):
    log = os.path.join(os.environ["SEEN_DIR"], f"rank{rank}-worker{worker}.txt")
    for record in _records(self, epoch, rank=rank, world=world, worker=worker, workers=workers):
        with open(log, "a") as f:
            f.write(f"{self.split} {epoch} {os.path.basename(record.shard)} {record.key}\\n")
        yield record


shards._ShardReading.records = records


@cvkit.hookimpl
def register_datasets(register):
    register("logged-webdataset", shards.build_webdataset, splits=shards.webdataset_splits,
             help="the webdataset format, logging what each process reads (a test's)")
'''


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A shapes tree (4 classes x 12 train + 3 val) and its shards of 6 images."""
    return _shapes_and_shards(tmp_path_factory.mktemp("sharded"), per_class=(12, 3), shard_size=6)


def _shapes_and_shards(root: Path, *, per_class: tuple[int, int], shard_size: int):
    """``root/tree`` (shapes, 32 px) and ``root/shards`` written from it by ``cvkit data shard``."""
    make_shapes(root / "tree", train_per_class=per_class[0], val_per_class=per_class[1], size=32, seed=11)
    r = run_cvkit("data", "shard", str(root / "tree"), str(root / "shards"), "--shard-size", str(shard_size), "--json")
    assert r.returncode == 0, r.stderr
    return root / "tree", root / "shards", json.loads(r.stdout)


def _logged_plugin(tmp_path: Path) -> dict:
    site = tmp_path / "site"
    site.mkdir()
    (site / "logged_shards.py").write_text(LOGGED)
    info = site / "logged_shards-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: logged-shards\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[cvkit]\nlogged = logged_shards\n")
    seen = tmp_path / "seen"
    seen.mkdir()
    return {"PYTHONPATH": str(site), "SEEN_DIR": str(seen), "OMP_NUM_THREADS": "1", "CVKIT_DIST_TIMEOUT": "120"}


def _seen(folder: Path) -> dict:
    """rank -> [(split, epoch, shard, key)]."""
    by_rank = {}
    for log in folder.glob("rank*-worker*.txt"):
        rank = int(log.name[4:].split("-")[0])
        by_rank.setdefault(rank, []).extend(tuple(line.split()) for line in log.read_text().splitlines())
    return by_rank


def test_two_processes_read_disjoint_shards_each_sample_once(sharded, tmp_path):
    _, shards, manifest = sharded
    assert [s["samples"] for s in manifest["splits"]["train"]["shards"]] == [6] * 8
    env = _logged_plugin(tmp_path)
    r = run_cvkit("train", str(shards), "--dataset", "logged-webdataset", "--nproc", "2", "--model", "net",
                  "--epochs", "2", "--batch-size", "8", "--workers", "0", "--precision", "fp32",
                  "--out", str(tmp_path / "run"), "--json", env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = _seen(tmp_path / "seen")
    assert sorted(seen) == [0, 1]
    for epoch in ("1", "2"):  # the engine's epochs count from 1
        train = {rank: [(s, k) for split, e, s, k in rows if split == "train" and e == epoch]
                 for rank, rows in seen.items()}
        # each process: 4 of the 8 shards, 24 samples, 24 // (8 / 2) = 6 steps: every sample trained
        assert len(train[0]) == len(train[1]) == 24
        assert not {s for s, _ in train[0]} & {s for s, _ in train[1]}  # disjoint shards
        keys = [k for rows in train.values() for _, k in rows]
        assert len(keys) == len(set(keys)) == 48  # every training sample once
    val = [k for rows in seen.values() for split, e, s, k in rows if split == "val"]
    assert len(val) == 2 * 12 and len(set(val)) == 12  # every val sample once per epoch
    orders = {e: [k for split, ep, s, k in seen[0] if split == "train" and ep == e] for e in ("1", "2")}
    assert orders["1"] != orders["2"]  # a new order each epoch


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """Enough shapes for net to learn (4 classes x 80 train + 20 val, 32 px) and their shards of 40."""
    return _shapes_and_shards(tmp_path_factory.mktemp("learnable"), per_class=(80, 20), shard_size=40)


def test_shards_train_like_their_folder_and_evaluate_identically(cli, learnable, tmp_path):
    """Same seed and epochs: the folder's and the shards' runs differ only in the order of the
    samples, so their best validation accuracies agree within 0.075 (6 of 80 images; measured:
    0.925 and 0.9 with seed 3, 0.975 and 0.975 with seed 4). One checkpoint evaluated on the
    folder's val/ and on the val shards gives the very same numbers: the shards hold the same bytes.
    In this process (the cli fixture): nothing here needs a fresh interpreter, and four fewer start-ups."""
    tree, shards, _ = learnable
    common = ["--model", "net", "--epochs", "15", "--batch-size", "8", "--lr", "0.02", "--workers", "0",
              "--seed", "3", "--json"]
    folder = cli("train", str(tree), *common, "--out", str(tmp_path / "folder"))
    sharded_run = cli("train", str(shards), "--dataset", "webdataset", *common, "--out", str(tmp_path / "shards"))
    assert folder.code == 0 and sharded_run.code == 0, folder.err + sharded_run.err
    a, b = json.loads(folder.out)["best_val_accuracy"], json.loads(sharded_run.out)["best_val_accuracy"]
    assert a >= 0.85 and b >= 0.85 and abs(a - b) <= 0.075, (a, b)
    on_folder = json.loads(cli("eval", str(tree), "-c", str(tmp_path / "folder"), "--json").out)
    on_shards = json.loads(cli("eval", str(shards), "--dataset", "webdataset", "-c", str(tmp_path / "folder"),
                               "--json").out)
    assert on_folder["images"] == on_shards["images"] == 80
    assert on_folder["accuracy"] == on_shards["accuracy"]
    assert on_folder["loss"] == pytest.approx(on_shards["loss"], abs=1e-6)


def test_eval_predict_preview_and_check_read_shards(cli, sharded, tmp_path):
    """Each command in this process (the cli fixture): none needs a fresh interpreter."""
    _, shards, _ = sharded
    r = cli("train", str(shards), "--dataset", "webdataset", "--model", "net", "--epochs", "1",
            "--batch-size", "8", "--workers", "0", "--out", str(tmp_path / "run"), "--json")
    assert r.code == 0, r.err
    ev = cli("eval", "-c", str(tmp_path / "run"), "--json")  # the run's own val shards
    assert ev.code == 0 and json.loads(ev.out)["images"] == 12, ev.err
    pr = cli("predict", str(shards), "--dataset", "webdataset", "-c", str(tmp_path / "run"), "--json",
             "--grid", str(tmp_path / "grid.png"))
    assert pr.code == 0, pr.err
    names = [row["path"] for row in json.loads(pr.out)]
    assert len(names) == len(set(names)) == 60 and names[0] == f"{shards}[0]"  # 48 train + 12 val samples
    assert (tmp_path / "grid.png").stat().st_size > 0
    pv = cli("preview", str(shards), "--dataset", "webdataset", "--out", str(tmp_path / "p.png"))
    assert pv.code == 0 and (tmp_path / "p.png").stat().st_size > 0, pv.err
    ck = cli("data", "check", str(shards), "--dataset", "webdataset", "--json")
    assert ck.code == 0, ck.err
    report = json.loads(ck.out)
    assert report["splits"]["train"]["images"] == 48 and report["splits"]["val"]["images"] == 12
    assert report["unreadable"] == [] and report["errors"] == []
