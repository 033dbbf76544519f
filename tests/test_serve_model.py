"""The model side of `cvkit serve`: uploaded bytes give the rows `cvkit predict --json` gives for the
same files, through the batcher; a bad upload is one DataError naming the file."""

from __future__ import annotations

import asyncio
import json

import pytest

from conftest import train_run
from cvkit_plugins.demo import make_shapes


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve") / "shapes"
    make_shapes(root, train_per_class=3, val_per_class=2, size=32, seed=4, classes=("circle", "square", "star"))
    run = train_run(root.parent / "run", str(root), "--model", "net", "--epochs", "1", "--batch-size", "3",
                    "--workers", "0")
    return root, run


def test_uploads_through_the_batcher_answer_as_predict_json(served, cli):
    from cvkit.serve.batcher import DynamicBatcher
    from cvkit.serve.model import ServedModel

    root, run = served
    files = sorted((root / "val").rglob("*.png"))
    expected = json.loads(cli("predict", *map(str, files), "-c", str(run), "--top-k", "2", "--json",
                              "--device", "cpu", "--precision", "fp32").out)
    model = ServedModel(str(run), device="cpu", precision="fp32", top_k=2)

    async def serve_all():
        batcher = DynamicBatcher(model.run_batch, max_batch=4, max_wait_ms=20)
        await batcher.start()
        inputs = [model.decode(f.name, f.read_bytes()) for f in files]
        answers = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        await batcher.stop()
        return answers, batcher.stats

    answers, stats = asyncio.run(serve_all())
    for answer, row in zip(answers, expected, strict=True):  # batches of up to 4 here, of 6 in predict
        assert [p["label"] for p in answer] == [p["label"] for p in row["predictions"]]
        assert [p["probability"] for p in answer] == pytest.approx([p["probability"] for p in row["predictions"]],
                                                                   abs=1e-5)
    assert stats.largest > 1  # the six uploads were batched
    described = model.describe()
    assert described["model"] == "net" and described["classes"] == ["circle", "square", "star"]
    assert described["input_size"] == [1, 32, 32] and described["top_k"] == 2


@pytest.mark.parametrize("data,reason", [(b"", "empty file"), (b"GIF89a-not-really", "not a readable image"),
                                         (None, "not a readable image")])
def test_a_bad_upload_is_one_error_naming_the_file(served, data, reason):
    from cvkit.errors import DataError
    from cvkit.serve.model import ServedModel

    root, run = served
    if data is None:  # a truncated PNG
        data = next((root / "val").rglob("*.png")).read_bytes()[:60]
    model = ServedModel(str(run), device="cpu")
    with pytest.raises(DataError) as caught:
        model.decode("upload.png", data)
    assert str(caught.value).startswith("upload.png: ") and reason in str(caught.value)
    assert "\n" not in str(caught.value)
