"""`cvkit serve` under load (issue 19): benchmarks/serve_load.py, 16 clients x 25 requests on loopback,
good and bad uploads mixed, against a batched and an unbatched server. Every good request must get
the right answer, every bad one a 4xx naming its file, and the server must be up after. The
figures it prints are for reading (docs/performance.md has them from a quiet machine), not asserted."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO, train_run
from cvkit_plugins.demo import make_shapes

spec = importlib.util.spec_from_file_location("serve_load", REPO / "benchmarks" / "serve_load.py")
serve_load = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve_load)


@pytest.mark.slow
def test_sixteen_clients_good_and_bad_uploads_batched_and_not(tmp_path):
    root = tmp_path / "shapes"
    make_shapes(root, train_per_class=3, val_per_class=3, size=32, seed=6, classes=("circle", "square", "star"))
    run = train_run(tmp_path / "run", str(root), "--model", "net", "--epochs", "1", "--batch-size", "3",
                    "--workers", "0")
    images = sorted((root / "val").rglob("*.png"))
    results = serve_load.compare(run, images, clients=16, requests=25, bad_every=5)
    print("\n" + serve_load.table(results))
    for label in ("batched", "unbatched"):
        r = results[label]
        assert r["requests"] == 400 and r["good"] == 320 and r["bad"] == 80
        assert r["good_correct"] == 320, r  # the reference answer, under load, in whatever batch
        assert r["bad_refused"] == 80, r  # each a 4xx naming its file
        assert r["alive_after"]
    assert results["batched"]["largest_batch"] > 1  # 16 clients at once did share batches
    assert results["unbatched"]["largest_batch"] == 1
