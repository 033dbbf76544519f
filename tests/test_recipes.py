"""Issue 17: training recipes. Each feature's effect, not only its flag: accumulation equals the
bigger batch, the weight average equals its closed form, --balance raises a rare class's recall,
clipping bounds a step, MixUp/CutMix give mixed targets, the per-step schedules, the recipes'
defaults, resume and the YAML config with all of them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from cvkit.config import make_config, read_config_file
from cvkit.engine.ema import WeightAverage
from cvkit.engine.phase import run_phase
from cvkit.engine.steps import StepRule, make_mix
from cvkit.errors import UsageError
from tests.conftest import train_run

pytestmark = pytest.mark.timeout(300)


def draw(root: Path, counts: dict[str, tuple[int, int]], seed: int = 0, signal: int = 70) -> Path:
    """32x32 grey pictures: ``horizontal`` or ``vertical`` stripes of contrast ``signal`` in noise;
    ``counts``: class -> (train, val)."""
    from PIL import Image

    rng = random.Random(seed)
    for kind, (n_train, n_val) in counts.items():
        for split, n in (("train", n_train), ("val", n_val)):
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                half, phase = rng.choice((2, 3, 4)), rng.randrange(8)
                img = Image.new("L", (32, 32))
                px = img.load()
                for y in range(32):
                    for x in range(32):
                        on = ((y if kind == "horizontal" else x) + phase) // half % 2
                        px[x, y] = max(0, min(255, 128 + (signal if on else -signal) + rng.randint(-60, 60)))
                img.save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return draw(tmp_path_factory.mktemp("recipes") / "stripes", {"horizontal": (16, 6), "vertical": (16, 6)})


FAST = ["--model", "net", "--workers", "0", "--precision", "fp32", "--transforms", "plain", "--seed", "3"]


def _state(run_dir: Path, name: str = "last.pt") -> dict:
    return torch.load(run_dir / name, weights_only=True)


# --- accumulation ------------------------------------------------------------------------------

def test_accumulating_n_batches_of_b_steps_like_one_batch_of_n_times_b(stripes, tmp_path):
    """net has no BatchNorm: 2 batches of 8 summed must give the weights of 1 batch of 16 (same
    shuffled order: the sampler's permutation does not depend on the batch size)."""
    small = train_run(tmp_path / "small", str(stripes), *FAST, "--epochs", "2", "--batch-size", "8", "--accumulate", "2")
    big = train_run(tmp_path / "big", str(stripes), *FAST, "--epochs", "2", "--batch-size", "16")
    one = train_run(tmp_path / "one", str(stripes), *FAST, "--epochs", "2", "--batch-size", "8")
    a, b, c = _state(small)["model_state"], _state(big)["model_state"], _state(one)["model_state"]
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key
    assert max(float((a[k] - c[k]).abs().max()) for k in a) > 1e-3  # without accumulation: other weights
    assert _state(small)["run"]["accumulate"] == 2


def test_a_short_last_group_is_averaged_over_its_own_batches():
    """3 batches with --accumulate 2: the last group has one batch, whose loss is not halved."""
    rule = StepRule(accumulate=2)
    assert [rule.group(s, 3) for s in (1, 2, 3)] == [(True, False, 2), (False, True, 2), (True, True, 1)]
    torch.manual_seed(0)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    batches = [(x[i:i + 2], y[i:i + 2]) for i in (0, 2, 4)]

    def train(rule, batches):
        torch.manual_seed(1)
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        run_phase(model, batches, torch.nn.functional.cross_entropy, device=torch.device("cpu"), optimizer=opt,
                  rule=rule)
        return model.weight.detach().clone()

    accumulated = train(rule, batches)
    # by hand: one step on the first 4 images, then one on the last 2
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for lo, hi in ((0, 4), (4, 6)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[lo:hi]), y[lo:hi]).backward()
        opt.step()
    assert torch.allclose(accumulated, model.weight, atol=1e-6)


# --- clipping ----------------------------------------------------------------------------------

def test_clip_grad_bounds_the_step_of_plain_sgd():
    torch.manual_seed(0)
    x, y = torch.randn(8, 4) * 50, torch.randint(0, 3, (8,))

    def moved(clip):
        torch.manual_seed(1)
        model = torch.nn.Linear(4, 3)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0)
        run_phase(model, [(x, y)], torch.nn.functional.cross_entropy, device=torch.device("cpu"), optimizer=opt,
                  rule=StepRule(clip_grad=clip))
        return float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())

    assert moved(None) > 1.0
    assert moved(0.01) == pytest.approx(0.01, rel=1e-3)  # lr 1 x a gradient of norm 0.01


# --- MixUp / CutMix ----------------------------------------------------------------------------

@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixing_gives_the_loss_mixed_pictures_and_class_probabilities(mixup, cutmix):
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    seen = {}

    def loss_fn(logits, targets):
        seen["targets"] = targets
        return torch.nn.functional.cross_entropy(logits, targets)

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 3)

        def forward(self, images):
            seen["images"] = images.detach().clone()
            return self.fc(images.flatten(1))

    model = Recorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = run_phase(model, [(x, y)], loss_fn, device=torch.device("cpu"), optimizer=opt,
                       rule=StepRule(mix=make_mix(mixup, cutmix, 3)))
    targets = seen["targets"]
    assert targets.shape == (8, 3) and targets.is_floating_point()
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert not torch.equal(targets, torch.nn.functional.one_hot(y, 3).float())  # mixed, not one-hot
    assert not torch.equal(seen["images"], x)
    assert result["images"] == 8  # accuracy is counted against the true labels
    assert make_mix(0, 0, 3) is None


def test_mixup_turns_the_cached_features_lever_off_and_says_so(tmp_path):
    """A frozen backbone under a deterministic transform caches its features, but mixed pictures
    have no cached features: the run record says the lever is off."""
    data = draw(tmp_path / "rgb", {"horizontal": (4, 2), "vertical": (4, 2)})
    common = ["--model", "resnet18-frozen", "--weights", "none", "--transforms", "plain", "--workers", "0",
              "--epochs", "1", "--batch-size", "4"]
    plain = _state(train_run(tmp_path / "plain", str(data), *common))["run"]
    mixed = _state(train_run(tmp_path / "mixed", str(data), *common, "--mixup", "0.2"))["run"]
    assert plain["cached_features"] is True
    assert mixed["cached_features"] is False and mixed["mixup"] == 0.2
    assert any("cached features are off" in w for w in mixed["warnings"])


# --- EMA ---------------------------------------------------------------------------------------

class _Toy:
    def __init__(self, model):
        self.model, self.checkpoint, self.run_record = model, None, {}


def test_the_weight_average_is_the_closed_form():
    """After k steps: d^k w0 + sum_i (1 - d) d^(k - i) w_i."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    run, decay = _Toy(model), 0.9
    ema = WeightAverage(decay)
    ema.on_train_start(run)
    history = [{k: v.clone() for k, v in model.state_dict().items()}]
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for step in range(1, 6):
        opt.zero_grad()
        model(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
        ema.on_step_end(run, step)
        history.append({k: v.clone() for k, v in model.state_dict().items()})
    k, differs = len(history) - 1, []
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            assert torch.equal(ema.average[key], value)  # num_batches_tracked: copied
            continue
        closed = decay ** k * history[0][key] + sum((1 - decay) * decay ** (k - i) * history[i][key]
                                                    for i in range(1, k + 1))
        assert torch.allclose(ema.average[key], closed, atol=1e-6), key
        differs.append(not torch.allclose(closed, value))
    assert sum(differs) >= 3  # weight, BN scale, running stats: the average is not the last weights


class _SignalInEpoch:
    """Sends this process SIGINT after the first optimizer step of epoch ``epoch``: cvkit's graceful
    stop saves last.pt there (mid-epoch) and exits 130."""

    def __init__(self, epoch: int):
        self.epoch, self.sent = epoch, False

    def on_step_end(self, run, step):
        import os
        import signal

        if run.epoch == self.epoch and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def test_every_recipe_part_together_resumes_exactly_after_a_stop_mid_epoch(stripes, tmp_path, monkeypatch):
    """--ema, --mixup, --accumulate, --clip-grad, --balance sampler and the warm-up cosine at once:
    stopped by SIGINT in epoch 2 and resumed, the run ends with the very weights (averaged and
    training) of the run that was not stopped."""
    import cvkit.train as engine
    from cvkit.cli import main

    args = [str(stripes), *FAST, "--batch-size", "8", "--ema", "0.8", "--mixup", "0.3", "--accumulate", "2",
            "--clip-grad", "5", "--balance", "sampler", "--warmup-epochs", "0.5", "--epochs", "3"]
    straight = train_run(tmp_path / "straight", *args)
    real = engine.engine_callbacks
    monkeypatch.setattr(engine, "engine_callbacks", lambda run, plan: real(run, plan) + [_SignalInEpoch(2)])
    with pytest.raises(SystemExit) as stopped:
        main(["train", *args, "--out", str(tmp_path / "resumed"), "--json"])
    assert stopped.value.code == 130
    assert _state(tmp_path / "resumed")["interrupted"]["step"] == 2  # after one step of two batches
    monkeypatch.setattr(engine, "engine_callbacks", real)
    train_run(tmp_path / "resumed", "--resume", str(tmp_path / "resumed"))
    a, b = _state(straight), _state(tmp_path / "resumed")
    assert a["ema"]["decay"] == 0.8 and a["ema"]["updates"] == 3 * 2  # 4 batches, 2 per step, 3 epochs
    assert "moving average" in a["run"]["weights"] and a["run"]["accumulate"] == 2
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
        assert torch.equal(a["ema"]["training_state"][key], b["ema"]["training_state"][key]), key
    # model_state (what eval, predict and export load) is the average, not the training weights
    assert any(not torch.equal(a["model_state"][k], a["ema"]["training_state"][k]) for k in a["model_state"])
    assert [r["val_accuracy"] for r in a["history"]] == [r["val_accuracy"] for r in b["history"]]


def test_validation_and_best_pt_use_the_averaged_weights(stripes, tmp_path, cli):
    """eval of best.pt (the average) repeats the validation accuracy and loss training recorded."""
    run = train_run(tmp_path / "ema", str(stripes), *FAST, "--batch-size", "8", "--epochs", "2", "--ema", "0.5")
    best = _state(run, "best.pt")
    r = cli("eval", "--checkpoint", str(run / "best.pt"), "--json", "--precision", "fp32")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["accuracy"] == pytest.approx(best["best"]["val_accuracy"], abs=1e-9)
    assert report["loss"] == pytest.approx(best["best"]["val_loss"], rel=1e-5)


# --- balance -----------------------------------------------------------------------------------

def _minority_recall(run_dir: Path) -> float:
    matrix = _state(run_dir, "best.pt")["metrics"]["confusion_matrix"]
    return matrix[1][1] / sum(matrix[1])


def test_balance_raises_the_rare_class_recall(tmp_path):
    """48 pictures of one class, 4 of the other: without balancing net never predicts the rare one
    (recall 0 measured); each --balance predicts most of it (measured: 1.0 with both)."""
    data = draw(tmp_path / "skewed", {"horizontal": (48, 20), "vertical": (4, 20)})
    args = [str(data), *FAST, "--epochs", "4", "--batch-size", "26", "--lr", "0.003"]
    recalls = {}
    for name, extra in (("none", []), ("sampler", ["--balance", "sampler"]), ("loss", ["--balance", "loss"])):
        recalls[name] = _minority_recall(train_run(tmp_path / name, *args, *extra))
    assert recalls["sampler"] >= recalls["none"] + 0.5, recalls
    assert recalls["loss"] >= recalls["none"] + 0.5, recalls


def test_balance_weights_and_the_sampler():
    from cvkit.distributed import BalancedSampler, balance_weights

    per_class, per_sample = balance_weights([0, 0, 0, 1], 3)
    assert per_class == pytest.approx([4 / 9, 4 / 3, 0.0])
    assert per_sample == pytest.approx([4 / 9] * 3 + [4 / 3])
    one = BalancedSampler(per_sample, 0, 1, seed=5)
    draws = []
    for epoch in range(200):
        one.set_epoch(epoch)
        draws += list(one)
    assert abs(draws.count(3) / len(draws) - 0.5) < 0.05  # the single rare sample: half the draws
    ranks = [BalancedSampler(per_sample, r, 2, seed=5) for r in (0, 1)]
    one.set_epoch(0)
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(list(one))  # two processes split one draw
    assert len(ranks[0]) == 2


def test_balance_loss_needs_a_loss_that_takes_class_weights(stripes, cli):
    r = cli("train", str(stripes), *FAST, "--epochs", "1", "--balance", "loss", "--loss", "mse")
    assert r.code != 0 and "--balance loss: loss 'mse' takes no class weights" in r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1


# --- schedules ---------------------------------------------------------------------------------

def test_cosine_warms_up_and_decays_per_optimizer_step(stripes, tmp_path):
    """32 images, batch 8: 4 steps per epoch. The lr of each epoch's first step (metrics.csv) follows
    the per-step factor: warm-up over 2 steps (half an epoch), then the cosine."""
    from cvkit_plugins.schedulers import cosine_factor

    run = train_run(tmp_path / "cos", str(stripes), *FAST, "--epochs", "3", "--batch-size", "8", "--lr", "0.01",
                    "--warmup-epochs", "0.5")
    lrs = [row["lr"] for row in _state(run)["history"]]
    expected = [0.01 * cosine_factor(s, total=12, warmup=2, floor=0.0) for s in (0, 4, 8)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert lrs[0] < lrs[1] and lrs[2] < lrs[1]
    factors = [cosine_factor(s, total=12, warmup=2, floor=0.0) for s in range(13)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and factors[-1] == pytest.approx(0.0, abs=1e-12)


def test_onecycle_rises_then_falls_and_warmup_needs_a_schedule_that_has_one(stripes, tmp_path, cli):
    run = train_run(tmp_path / "one", str(stripes), *FAST, "--epochs", "4", "--batch-size", "8", "--lr", "0.01",
                    "--scheduler", "onecycle")
    lrs = [row["lr"] for row in _state(run)["history"]]
    assert lrs[0] < lrs[1] and lrs[3] < lrs[1] and max(lrs) <= 0.01 + 1e-12
    r = cli("train", str(stripes), *FAST, "--epochs", "1", "--scheduler", "step", "--warmup-epochs", "1")
    assert r.code != 0 and "--warmup-epochs 1: scheduler 'step' has no warm-up" in r.err


# --- recipes and the config file ---------------------------------------------------------------

def test_recipes_fill_in_what_the_user_did_not_give():
    default = make_config({}, {"data": "d"})
    assert (default.recipe, default.optimizer, default.scheduler, default.lr) == ("default", "adamw", "cosine", 0.001)
    assert default.options["loss"]["label_smoothing"] == 0.1 and default.warmup_epochs > 0
    chapter = make_config({}, {"data": "d", "recipe": "chapter"})
    assert (chapter.optimizer, chapter.lr, chapter.scheduler, chapter.loss) == ("sgd", 0.001, "step", "cross-entropy")
    assert chapter.options == {}
    mine = make_config({}, {"data": "d", "optimizer": "sgd", "lr": 0.1,
                            "options": {"loss": {"label_smoothing": 0.0}}})
    assert (mine.optimizer, mine.lr, mine.scheduler) == ("sgd", 0.1, "cosine")
    assert "optimizer" not in mine.options  # AdamW's weight decay is not pushed onto another optimizer
    assert mine.options["loss"]["label_smoothing"] == 0.0
    with pytest.raises(UsageError, match="--recipe 'fast': unknown recipe"):
        make_config({}, {"recipe": "fast"})


def test_every_recipe_option_reads_from_a_yaml_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: chapter\nwarmup-epochs: 1\nmixup: 0.2\ncutmix: 1\nema: 0.99\naccumulate: 4\n"
                    "clip-grad: 2\nbalance: loss\nscheduler: cosine\n")
    config = make_config(read_config_file(path), {})
    assert (config.recipe, config.warmup_epochs, config.mixup, config.cutmix, config.ema, config.accumulate,
            config.clip_grad, config.balance) == ("chapter", 1.0, 0.2, 1.0, 0.99, 4, 2.0, "loss")
    path.write_text("ema: 2\n")
    with pytest.raises(UsageError, match="ema must be between 0 and 1"):
        read_config_file(path)
    path.write_text("balance: oversample\n")
    with pytest.raises(UsageError, match="balance must be sampler or loss"):
        read_config_file(path)


def test_a_run_from_before_recipes_resumes_with_the_chapter_recipe():
    """Its saved options lack the recipe; the chapter's defaults were its defaults."""
    import inspect

    from cvkit.commands import train

    assert 'saved_config.setdefault("recipe", "chapter")' in inspect.getsource(train.train_command)


@pytest.mark.slow
def test_every_recipe_part_trains_under_two_processes(stripes, tmp_path):
    """--nproc 2 (gloo on the CPU) with each part on: the balanced sampler splits one draw between
    the processes, accumulation skips the gradient exchange between a group's batches, and the
    average is the same in both processes (rank 0 saves it)."""
    import subprocess
    import sys

    from tests.test_distributed import JOB_TIMEOUT, _env

    out = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "cvkit", "train", str(stripes), *FAST, "--batch-size", "8",
                        "--epochs", "2", "--ema", "0.8", "--mixup", "0.3", "--accumulate", "2", "--clip-grad", "5",
                        "--balance", "sampler", "--nproc", "2", "--out", str(out), "--json"],
                       capture_output=True, text=True, timeout=JOB_TIMEOUT, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = _state(out)
    assert ckpt["run"]["processes"] == 2 and ckpt["run"]["balance"]["by"] == "sampler"
    # 32 images: 16 draws per process, in batches of 4 (the global 8 halved), 2 batches per step: 2 steps an epoch
    assert ckpt["ema"]["updates"] == 2 * 2
    assert all(torch.isfinite(v).all() for v in ckpt["model_state"].values() if v.is_floating_point())
