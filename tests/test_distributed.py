"""Issue 6: distributed data-parallel training through torchrun (CPU, gloo, 2 processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cvkit import distributed
from cvkit.distributed import Dist, ShardSampler
from cvkit.errors import UsageError

JOB_TIMEOUT = 300  # seconds; a job that hangs fails the test instead of the suite


def draw_stripes(root: Path, train: int = 60, val: int = 15, seed: int = 0) -> Path:
    """A learnable toy set: 32x32 grey pictures of horizontal or vertical stripes, checks or none,
    with random period, phase and noise (LeNet learns it in a few epochs; chance is 0.25)."""
    import random

    from PIL import Image

    rng = random.Random(seed)
    for split, n in (("train", train), ("val", val)):
        for kind in ("horizontal", "vertical", "checks", "plain"):
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                half, phase = rng.choice((2, 3, 4)), rng.randrange(8)
                img = Image.new("L", (32, 32))
                px = img.load()
                for y in range(32):
                    for x in range(32):
                        h, v = ((y + phase) // half) % 2, ((x + phase) // half) % 2
                        on = {"horizontal": h, "vertical": v, "checks": h ^ v, "plain": 0}[kind]
                        px[x, y] = max(0, min(255, (200 if on else 55) + rng.randint(-40, 40)))
                img.save(folder / f"{kind}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """4 classes x (60 train + 15 val) pictures."""
    return draw_stripes(tmp_path_factory.mktemp("dist") / "stripes", seed=3)


VAL_IMAGES = 60


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
                        "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CVKIT_DIST_TIMEOUT="120", **extra)
    return env


def _torchrun(nproc: int, *args: str, restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={restarts}", "-m", "cvkit", *args]


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_TIMEOUT, env=_env(), **kw)


TRAIN = ["--model", "net", "--workers", "0", "--precision", "fp32", "--recipe", "chapter", "--lr", "0.05", "--seed", "1"]


# --- pieces, no processes ------------------------------------------------------------------------

def test_shards_cover_every_sample_exactly_once():
    for length in (0, 1, 7, 8, 100):
        for world in (1, 2, 3, 4):
            shards = [list(ShardSampler(length, r, world)) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(length))
            assert sum(len(ShardSampler(length, r, world)) for r in range(world)) == length


def test_batch_size_is_global_and_must_divide():
    assert distributed.per_process_batch(32, Dist(world=4)) == 8
    assert distributed.per_process_batch(32, Dist()) == 32
    with pytest.raises(UsageError, match="--batch-size 30"):
        distributed.per_process_batch(30, Dist(world=4))


def test_environment_of_torchrun_is_read_and_checked():
    info = distributed.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                 "TORCHELASTIC_RESTART_COUNT": "3", "TORCHELASTIC_RUN_ID": "job"})
    assert (info.rank, info.world, info.local_rank, info.restart, info.run_id) == (1, 2, 1, 3, "job")
    assert info.enabled and not info.is_main
    assert not distributed.from_env({}).enabled
    assert not distributed.from_env({"RANK": "3"}).enabled  # a stray RANK without WORLD_SIZE: one process
    assert not distributed.from_env({"RANK": "0", "WORLD_SIZE": "1"}).enabled  # not torchrun's
    alone = distributed.from_env({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                                  "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "abc"})
    assert alone.enabled and alone.world == 1 and alone.is_main  # torchrun --nproc 1: a process group of one
    with pytest.raises(UsageError, match="RANK=2"):
        distributed.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(UsageError, match="WORLD_SIZE"):
        distributed.from_env({"WORLD_SIZE": "two"})


def test_launcher_builds_the_torchrun_command():
    argv = ["train", "data", "--nproc", "2", "--epochs", "1", "--nproc=3", "--json"]
    assert distributed.strip_nproc(argv) == ["train", "data", "--epochs", "1", "--json"]
    cmd = distributed.torchrun_command(2, ["train", "data"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "cvkit",
                       "train", "data"]


def test_nproc_inside_torchrun_is_refused(cli, monkeypatch, toy):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    r = cli("train", str(toy), "--nproc", "2")
    assert r.code == 2 and "already running under torchrun" in r.err


def test_one_process_passes_results_through():
    result = {"loss": 1.0, "accuracy": 0.5, "images": 4, "seconds": 1.0, "images_per_second": 4.0}
    assert distributed.reduce_phase(result, Dist(), torch.device("cpu")) is result
    assert distributed.is_peer_failure(RuntimeError("[../third_party/gloo/...] Connection closed by peer"))
    assert not distributed.is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_a_peer_lost_in_a_collective_is_reworded_with_where_and_what_is_saved():
    inner = distributed.peer_lost(RuntimeError("Connection reset by peer\nmore"))  # a collective knows neither
    outer = distributed.peer_lost(inner, "epoch 2", "run/last.pt holds epoch 1")  # the loop adds both
    assert str(outer) == ("epoch 2: another process of this distributed job stopped or failed (Connection reset "
                          "by peer); stopping this one too; run/last.pt holds epoch 1")
    assert outer.exit_code == 7


# --- real jobs: torchrun, gloo, 2 processes ------------------------------------------------------

@pytest.fixture(scope="module")
def one_and_two(toy, tmp_path_factory):
    """The toy set trained 4 epochs by one process (``ROOT/one``) and by two (``ROOT/runs/ddp``,
    ``--nproc 2``: the launcher runs torchrun, gloo, and rank 0 writes the run): (ROOT, one, two),
    the completed processes. Shared by the two tests below, which once each trained a 2-process run
    of their own; a job started by torchrun directly is the other tests' (killing a rank, restarts,
    frozen backbones)."""
    root = tmp_path_factory.mktemp("one-and-two")
    args = [*TRAIN, "--epochs", "4", "--batch-size", "16", "--json"]
    one = _run([sys.executable, "-m", "cvkit", "train", str(toy), *args, "--out", str(root / "one")], cwd=root)
    two = _run([sys.executable, "-m", "cvkit", "train", str(toy), *args, "--out", str(root / "runs" / "ddp"),
                "--nproc", "2"], cwd=root)
    return root, one, two


@pytest.mark.slow
def test_two_processes_write_one_run_whose_accuracy_eval_repeats(one_and_two):
    tmp_path, _, r = one_and_two
    run = tmp_path / "runs" / "ddp"
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)  # one JSON document: rank 0 alone prints
    assert summary["run_dir"] == str(run)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"]  # one run directory
    assert {"best.pt", "last.pt", "metrics.csv", "config.yaml", "curves.png"} <= {p.name for p in run.iterdir()}
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["run"]["processes"] == 2 and ckpt["run"]["backend"] == "gloo"
    assert not any(k.startswith("module.") for k in ckpt["model_state"])  # the unwrapped model's keys
    confusion = ckpt["metrics"]["confusion_matrix"]
    assert sum(map(sum, confusion)) == VAL_IMAGES  # the whole validation set, each image once
    e = subprocess.run([sys.executable, "-m", "cvkit", "eval", "--checkpoint", str(run / "best.pt"),
                        "--precision", "fp32", "--json"], capture_output=True, text=True, timeout=JOB_TIMEOUT,
                       env=_env(), cwd=tmp_path)
    assert e.returncode == 0, e.stderr
    report = json.loads(e.stdout)
    assert report["images"] == VAL_IMAGES
    assert report["accuracy"] == pytest.approx(summary["best_val_accuracy"], abs=1e-9)
    assert report["confusion_matrix"] == confusion


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(tmp_path):
    """16 training images, a global batch of 16: each epoch is one step over the same 16 images,
    whichever process holds which 8, so DDP's averaged gradient must give one process's weights."""
    data = draw_stripes(tmp_path / "one-batch", train=4, val=2, seed=7)
    args = [*TRAIN, "--epochs", "3", "--batch-size", "16", "--json"]
    states = {}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        r = _run([sys.executable, "-m", "cvkit", "train", str(data), *args, "--out", str(tmp_path / name), *extra])
        assert r.returncode == 0, r.stderr[-3000:]
        ckpt = torch.load(tmp_path / name / "last.pt", weights_only=True)
        assert ckpt["run"]["processes"] == (2 if extra else 1)
        states[name] = ckpt
    one, two = states["one"]["model_state"], states["two"]["model_state"]
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], rtol=1e-4, atol=1e-5), key
    losses = [[h["train_loss"] for h in states[n]["history"]] for n in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4) and losses[0][0] != losses[0][-1], losses


@pytest.mark.slow
def test_two_processes_learn_the_toy_set_as_well_as_one(one_and_two):
    """Different data orders (DistributedSampler shuffles on its own), so the same accuracy only
    within a few images; the test above checks the steps themselves."""
    _, one, two = one_and_two
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    acc1 = json.loads(one.stdout)["best_val_accuracy"]
    acc2 = json.loads(two.stdout)["best_val_accuracy"]
    assert acc1 > 0.8 and acc2 > 0.8  # both learnt the toy set (chance: 0.25)
    assert abs(acc1 - acc2) <= 0.1, (acc1, acc2)
    assert "torch.distributed.run" in two.stderr  # the launcher shows the torchrun command it runs


def _rank_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun started (children of ``parent``)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def _wait_for(predicate, seconds: float):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return None


@pytest.mark.slow
def test_killing_one_rank_ends_the_job_within_bounded_time(toy, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_torchrun(2, "train", str(toy), *TRAIN, "--epochs", "200", "--batch-size", "4",
                                      "--out", str(run)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=tmp_path)
    try:
        assert _wait_for(lambda: (run / "last.pt").exists(), 180), "training never finished an epoch"
        ranks = _rank_pids(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        code = proc.wait(timeout=90)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    assert code != 0
    assert took < 60, took
    # rank 0 notices, says so in one line naming what last.pt holds, and leaves with exit 7, which
    # torchrun's failure summary reports
    lines = [line for line in err.splitlines() if "another process of this distributed job stopped" in line]
    assert len(lines) == 1 and "[rank 0]" in lines[0] and f"{run / 'last.pt'} holds epoch" in lines[0], err[-3000:]
    assert re.search(r"rank\s*: 0 \(local_rank: 0\)\s*\n\s*exitcode\s*: 7\b", err), err[-3000:]
    for pid in ranks.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    torch.load(run / "last.pt", weights_only=True)  # the last saved checkpoint is intact


@pytest.mark.slow
def test_a_restarted_job_resumes_from_last_pt(toy, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_torchrun(2, "train", str(toy), *TRAIN, "--epochs", "3", "--batch-size", "4",
                                      "--out", str(run), "--json", restarts=1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
    try:
        assert _wait_for(lambda: (run / "last.pt").exists(), 180), "training never finished an epoch"
        ranks = _rank_pids(proc.pid)
        os.kill(ranks[1], signal.SIGKILL)  # torchrun restarts both processes once
        out, err = proc.communicate(timeout=JOB_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "continuing" in err and "from its last.pt" in err
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2, 3]  # each epoch once, none lost or repeated
    assert json.loads(out)["last_epoch"] == 3


def _ctrl_c_when(proc, ready, never: str, pause: float = 0.0) -> str:
    """Send SIGINT to ``proc`` once ``ready()`` holds; its stderr once it has exited."""
    try:
        assert _wait_for(ready, 180), never
        time.sleep(pause)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err


@pytest.mark.slow
def test_ctrl_c_on_the_launcher_stops_every_rank_and_saves(toy, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cvkit", "train", str(toy), *TRAIN, "--epochs", "200",
                             "--batch-size", "4", "--out", str(run), "--nproc", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
    err = _ctrl_c_when(proc, lambda: (run / "last.pt").exists(), "training never finished an epoch", pause=0.5)
    assert proc.returncode == 130, err[-3000:]
    assert "SIGINT: stopped" in err and "--nproc 2" in err
    assert err.count("SIGINT: stopped") == 1  # rank 0 alone says it
    ckpt = torch.load(run / "last.pt", weights_only=True)
    if ckpt["interrupted"]:  # stopped inside a train phase: every rank at the same step
        assert ckpt["interrupted"]["processes"] == 2 and "stopped in epoch" in err
    else:  # the signal came during validation or a save (the next test makes sure of it)
        assert "stopped after epoch" in err


CHILD = str(Path(__file__).with_name("train_child.py"))


@pytest.mark.slow
def test_ctrl_c_during_validation_finishes_and_saves_that_epoch_on_every_rank(toy, tmp_path):
    """The signal lands while both ranks validate epoch 1 (tests/train_child.py holds them there)."""
    run, events = tmp_path / "run", tmp_path / "events.txt"
    events.touch()
    proc = subprocess.Popen([sys.executable, CHILD, "train", str(toy), *TRAIN, "--epochs", "200",
                             "--batch-size", "16", "--out", str(run), "--nproc", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=_env(CHILD_EVENTS=str(events), CHILD_WAIT_IN_VAL="1"))
    err = _ctrl_c_when(proc, lambda: {"validating 0", "validating 1"} <= set(events.read_text().splitlines()),
                       "the ranks never reached validation")
    assert proc.returncode == 130, err[-3000:]
    assert err.count("SIGINT: stopped after epoch 1") == 1, err[-3000:]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["interrupted"] is None and [h["epoch"] for h in ckpt["history"]] == [1]


@pytest.mark.slow
def test_frozen_backbones_train_only_the_head_under_ddp(tmp_path):
    data = draw_stripes(tmp_path / "small", train=8, val=4, seed=5)
    states = {}
    for transforms in ("plain", "chapter"):  # cached features (DDP over fc) / fused backbone (DDP over it)
        run = tmp_path / transforms
        r = _run(_torchrun(2, "train", str(data), "--model", "resnet18-frozen", "--weights", "none",
                           "--transforms", transforms, "--epochs", "1", "--batch-size", "8", "--workers", "0",
                           "--seed", "2", "--out", str(run), "--json"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        ckpt = torch.load(run / "last.pt", weights_only=True)
        assert ckpt["run"]["processes"] == 2
        assert ckpt["run"]["cached_features" if transforms == "plain" else "frozen_backbone"] is True
        states[transforms] = ckpt["model_state"]
    a, b = states["plain"], states["chapter"]
    assert a.keys() == b.keys()
    for key in a:  # the same seed gives the same initial weights; only fc may have moved
        if key.startswith("fc."):
            assert not torch.equal(a[key], b[key]), key
        else:
            assert torch.equal(a[key], b[key]), key
