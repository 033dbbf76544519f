"""One batch through a cvkit checkpoint's model three ways: cvkit's torch path and the ONNX export.

    python benchmarks/onnx_batch.py CHECKPOINT.pt MODEL.onnx [--images FOLDER] [--batch 32]
                                    [--warmup 2] [--iterations 5]

The forward pass alone (no start-up, no image decoding), timed on one batch:

- ``torch-auto``: what ``cvkit predict`` runs, ``cvkit.inference.restore_model(CK, device=cpu)`` (the
  model with each BatchNorm folded into its convolution) under ``torch.inference_mode()`` and
  ``cvkit.device.autocast`` at ``resolve_precision("auto", cpu)`` (bf16 on a CPU with native bf16);
- ``torch-fp32``: the same model in fp32;
- ``onnx``: ``cvkit.onnxrun.OnnxModel(MODEL.onnx).run(batch)``, onnxruntime on the CPU in fp32, its
  default threads (what ``cvkit predict --checkpoint MODEL.onnx`` runs).

The batch is the first ``--batch`` JPEGs of ``--images`` (repeated when there are fewer), prepared as
the export's metadata says (``OnnxModel.preprocess``, the model's eval transform), the same array for
all three; without ``--images``, seeded random normal inputs. Each side runs ``--warmup`` times, then
``--iterations`` rounds in which the three run in turn (alternating, so a busy moment of the machine
falls on all of them); images/s = batch / the median seconds of a side's forward passes. It prints
one JSON object with every time, the rates, and how far each torch side's logits lie from onnx's.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time


def load_batch(model, folder: str | None, size: int, seed: int):
    import numpy as np

    if folder:
        paths = sorted(glob.glob(os.path.join(folder, "**", "*.jpg"), recursive=True))
        if not paths:
            raise SystemExit(f"--images {folder}: no .jpg files")
        from PIL import Image

        chosen = (paths * (size // len(paths) + 1))[:size]
        prepared = {}
        for p in dict.fromkeys(chosen):
            with Image.open(p) as picture:
                prepared[p] = model.preprocess(picture)
        return np.stack([prepared[p] for p in chosen]), f"{len(set(chosen))} JPEGs of {folder}"
    shape = (size, *model.meta["input_size"])
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32), "seeded random normal"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a cvkit checkpoint (.pt)")
    parser.add_argument("onnx", help="its export by cvkit export --format onnx")
    parser.add_argument("--images", help="a folder of JPEGs for the batch [seeded random inputs]")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from cvkit.device import autocast, resolve_device, resolve_precision
    from cvkit.inference import restore_model
    from cvkit.onnxrun import OnnxModel

    device = resolve_device("cpu")
    auto = resolve_precision("auto", device)
    model, _, spec, _, _ = restore_model(args.checkpoint, device=device)
    onnx = OnnxModel(args.onnx)
    batch, source = load_batch(onnx, args.images, args.batch, args.seed)
    tensor = torch.from_numpy(batch).to(device)

    def torch_side(precision):
        def forward():
            with torch.inference_mode(), autocast(device, precision):
                return model(tensor).float().numpy()
        return forward

    sides = {"torch-auto": torch_side(auto), "torch-fp32": torch_side("fp32"), "onnx": lambda: onnx.run(batch)}
    logits = {}
    for name, forward in sides.items():
        for _ in range(args.warmup):
            logits[name] = forward()
    seconds = {name: [] for name in sides}
    for _ in range(args.iterations):
        for name, forward in sides.items():
            t0 = time.perf_counter()
            forward()
            seconds[name].append(round(time.perf_counter() - t0, 5))
    rates = {name: round(args.batch / statistics.median(s), 3) for name, s in seconds.items()}
    top1 = {name: v.argmax(1) for name, v in logits.items()}
    scale = float(np.abs(logits["torch-fp32"]).max()) or 1.0

    def compare(name):  # a torch side's logits against onnx's, on the warm-up's last run
        diff = float(np.abs(logits[name] - logits["onnx"]).max())
        return {"max_abs_logit_difference": float(f"{diff:.3g}"),
                "relative_to_largest_logit": float(f"{diff / scale:.3g}"),
                "top1_agreement": round(float((top1[name] == top1["onnx"]).mean()), 4)}

    result = {
        "kind": "onnx-batch", "model": spec.name, "batch_size": args.batch, "input_size": list(batch.shape[1:]),
        "inputs": source, "warmup": args.warmup, "iterations": args.iterations,
        "precision_auto": auto, "torch_threads": torch.get_num_threads(),
        "onnx_threads": onnx.session.get_session_options().intra_op_num_threads,
        "torch_version": torch.__version__, "onnxruntime_version": _ort_version(),
        "seconds": seconds, "images_per_second": rates,
        "onnx_vs": {name: compare(name) for name in ("torch-auto", "torch-fp32")},
    }
    print(json.dumps(result))
    return 0


def _ort_version():
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    sys.exit(main())
