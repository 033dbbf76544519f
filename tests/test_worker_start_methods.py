"""DataLoader workers under each start method: ``fork`` (Linux up to Python 3.13), ``spawn`` (macOS,
Windows) and ``forkserver`` (Linux from Python 3.14). Under spawn and forkserver a worker is a new
interpreter that receives the dataset, its transforms and cvkit's ``worker_init_fn`` by pickle, and
inherits nothing patched in the parent: what fork hides. Each case runs ``cvkit`` in a subprocess
whose start method is set before anything else.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

from cvkit_plugins.demo import make_shapes

METHODS = [m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]
LAUNCH = ("import multiprocessing, sys; multiprocessing.set_start_method(sys.argv[1]); "
          "from cvkit.cli import main; main(sys.argv[2:])")
TRAIN = ["--model", "net", "--workers", "1", "--batch-size", "8", "--epochs", "1", "--lr", "0.05",
         "--precision", "fp32", "--seed", "3"]

# A dataset plugin whose training pictures make the worker die or hang; the class is at module level,
# as spawn needs (it pickles the dataset into each worker).
FAULTY = """
import os
import signal
import time

import cvkit
from cvkit_plugins.imagefolder import CvkitImageFolder


class Faulty(CvkitImageFolder):
    fault = ""

    def __getitem__(self, index):
        from torch.utils.data import get_worker_info

        if self.fault and get_worker_info() is not None:
            if self.fault == "exit":
                os._exit(1)
            if self.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        return super().__getitem__(index)


def build(root, *, split, transform, fault: str = "exit"):
    dataset = Faulty(os.path.join(root, split), transform=transform)
    dataset.fault = fault if split == "train" else ""
    return dataset


@cvkit.hookimpl
def register_datasets(register):
    register("faulty", build, help="an image folder whose worker processes die or hang")
"""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods") / "shapes"
    make_shapes(root, train_per_class=6, val_per_class=3, size=32, seed=2)
    return root


def _cvkit(method: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCH, method, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=240)


@pytest.mark.slow
def test_training_with_workers_gives_the_same_weights_under_fork_and_spawn(shapes, tmp_path):
    methods = [m for m in ("fork", "spawn") if m in METHODS]
    weights = {}
    for method in methods:
        r = _cvkit(method, "train", str(shapes), *TRAIN, "--out", str(tmp_path / method), "--json")
        assert r.returncode == 0, f"{method}: {r.stderr[-2000:]}"
        weights[method] = torch.load(tmp_path / method / "last.pt", weights_only=True)["model_state"]
    first = weights[methods[0]]
    for method in methods[1:]:
        for key, tensor in first.items():
            assert torch.equal(tensor, weights[method][key]), (method, key)


# A hang is found by the DataLoader's timeout whatever the start method (tests/test_reliability_train.py);
# a death is found through SIGCHLD and the worker's exit status, which is what differs here. The loader's
# timeout (600 s) is beyond this test's own (240 s): a death noticed only when the wait times out (what
# forkserver workers, children of the fork server, gave before cvkit chose spawn there) fails the test.
@pytest.mark.slow
@pytest.mark.parametrize("method, fault, words", [
    ("spawn", "exit", "exited with code 1"),
    ("forkserver", "kill", "was killed by "),
])
def test_a_dead_worker_is_a_clear_error_without_fork(fake_dist, shapes, tmp_path, method, fault, words):
    if method not in METHODS:
        pytest.skip(f"no {method} start method on this platform")
    site = fake_dist("cvkit-faulty", {"faulty_data": FAULTY}, {"faulty": "faulty_data"})
    r = _cvkit(method, "train", str(shapes), *TRAIN, "--dataset", "faulty", "--opt", f"dataset.fault={fault}",
               "--out", str(tmp_path / "run"), env={"PYTHONPATH": str(site), "CVKIT_LOADER_TIMEOUT": "600"})
    assert r.returncode == 3, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[0].startswith("cvkit: error: --workers 1: ") and words in lines[0], lines[0]
