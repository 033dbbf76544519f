"""The benchmark's own data, drawn offline, the same bytes for the same seed, cached in a folder.

Three trees under ``ROOT/full/`` (``ROOT/quick/`` for ``--quick``, ``ROOT/smoke/`` for run.py's ``--smoke``;
ROOT defaults to ``.bench-data/``):

- ``gray``: a grayscale 32x32 ImageFolder tree (``train/`` and ``val/``, 4 shape classes) for the
  chapter's ``net``: a light circle, square, star or triangle near the centre of a darker noisy
  ground, saved as 8-bit grayscale PNGs.
- ``rgb``: "photo-like" RGB JPEGs of varied sizes (300-1200 px wide, quality 90) in an ImageFolder
  tree (``train/`` and ``val/``, 3 classes) for the resnet18 rows. Each picture is a smooth two-colour
  gradient, a few soft-edged shapes, a blur and sensor-like noise; the classes differ in palette and
  in the kind of shapes (``dusk``: warm sky and a sun, ``sea``: blue bands, ``forest``: green
  triangles), so even a head on random features can learn them.
- ``predict``: a flat folder of JPEGs drawn like ``rgb`` (other seeds, so none is a training
  picture) for ``cvkit predict`` and the plain predict script.

A tree is reused when its marker (``.bench-data.json``) says it is complete and was drawn with the
same parameters; otherwise it is drawn again (a folder that is not benchmark data is never
deleted). ``python benchmarks/data.py [ROOT] [--quick]`` draws them and prints a summary.
``benchmarks/backbone.py`` keeps the frozen rows' pretrained resnet18 beside them
(``ROOT/full/backbone/``), cached with the same kind of marker.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
from pathlib import Path

MARKER = ".bench-data.json"  # hidden: ImageFolder and cvkit predict never see it
VERSION = 1  # bump when the drawing changes, so old caches are redrawn

GRAY_CLASSES = ("circle", "square", "star", "triangle")
RGB_CLASSES = ("dusk", "forest", "sea")

# full benchmark: 1,500 grayscale pictures; 330 RGB pictures; 200 to predict
FULL = {"gray": {"train_per_class": 300, "val_per_class": 75},
        "rgb": {"train_per_class": 80, "val_per_class": 30},
        "predict": {"count": 200}}
# --quick: just enough to run every row once
QUICK = {"gray": {"train_per_class": 40, "val_per_class": 10},
         "rgb": {"train_per_class": 8, "val_per_class": 4},
         "predict": {"count": 12}}
# run.py --smoke (the suite's harness test): the least that runs every row, one or two batches an epoch
SMOKE = {"gray": {"train_per_class": 16, "val_per_class": 4},
         "rgb": {"train_per_class": 4, "val_per_class": 2},
         "predict": {"count": 4}}
SIZES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}

GRAY_SIZE_RANGE = (0.6, 0.9)  # circumradius, as a fraction of half the picture
GRAY_JITTER = 0.08  # centre offset, as a fraction of the picture
GRAY_ROTATION = 180  # degrees either way
WIDTH_RANGE = (300, 1200)
ASPECT_RANGE = (0.6, 1.4)  # height / width
JPEG_QUALITY = 90


def _digest_seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _read_marker(root: Path) -> dict | None:
    try:
        data = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == "cvkit-bench" else None


def _write_marker(root: Path, params: dict, complete: bool) -> None:
    tmp = root / f".{MARKER}.tmp"
    tmp.write_text(json.dumps({"kind": "cvkit-bench", "complete": complete, "params": params}, indent=1) + "\n")
    os.replace(tmp, root / MARKER)


def _fresh(root: Path, params: dict) -> bool:
    """True when ``root`` already holds a complete tree drawn with ``params``; else empties it."""
    marker = _read_marker(root)
    if marker is not None and marker.get("complete") and marker.get("params") == params:
        return True
    if marker is not None:  # ours, half-written or drawn with other parameters
        shutil.rmtree(root)
    elif root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root}: exists, is not empty and is not benchmark data; choose another --data-root")
    root.mkdir(parents=True, exist_ok=True)
    _write_marker(root, params, complete=False)
    return False


# --- grayscale 32x32 shapes -------------------------------------------------------------------

def draw_gray(label: str, size: int, rng: random.Random):
    """One ``size``x``size`` grayscale picture of a light ``label`` shape on a darker noisy ground.

    Easier than cvkit's demo shapes (bigger, near the centre, less clutter), so the chapter's Net
    learns it from ~1,200 pictures in 10 epochs."""
    from PIL import Image, ImageDraw, ImageFilter

    s = 4  # drawn 4x larger, then reduced: smooth edges
    big = size * s
    background = rng.randint(0, 90)
    shape = rng.randint(min(255, background + 90), 255)
    image = Image.new("L", (big, big), background)
    pen = ImageDraw.Draw(image)
    for _ in range(rng.randint(0, 2)):  # a faint stroke or two
        pen.line([(rng.uniform(0, big), rng.uniform(0, big)) for _ in range(2)],
                 fill=min(255, background + rng.randint(15, 35)), width=s)
    radius = rng.uniform(*GRAY_SIZE_RANGE) * big / 2
    cx = big / 2 + rng.uniform(-1, 1) * GRAY_JITTER * big
    cy = big / 2 + rng.uniform(-1, 1) * GRAY_JITTER * big
    angle = -math.pi / 2 + math.radians(rng.uniform(-GRAY_ROTATION, GRAY_ROTATION))
    if label == "circle":
        r = radius * 0.85
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=shape)
    else:
        corners, radii = {"square": (4, [radius]), "triangle": (3, [radius]),
                          "star": (5, [radius, radius * rng.uniform(0.38, 0.5)])}[label]
        steps = corners * len(radii)
        pen.polygon([(cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / steps),
                      cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / steps))
                     for i in range(steps)], fill=shape)
    image = image.reduce(s)
    noise = Image.frombytes("L", (size, size), rng.randbytes(size * size))
    image = Image.blend(image, noise, rng.uniform(0.03, 0.12))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.6)))
    return image


def make_gray(root, *, seed: int = 0, train_per_class: int = 300, val_per_class: int = 75,
              size: int = 32) -> dict:
    root = Path(root)
    params = {"version": VERSION, "seed": seed, "train_per_class": train_per_class,
              "val_per_class": val_per_class, "size": size, "classes": list(GRAY_CLASSES)}
    summary = {"root": str(root), "classes": list(GRAY_CLASSES),
               "train": train_per_class * len(GRAY_CLASSES), "val": val_per_class * len(GRAY_CLASSES)}
    if _fresh(root, params):
        return {**summary, "created": False}
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in GRAY_CLASSES:
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                rng = random.Random(f"cvkit-bench-gray/{seed}/{split}/{label}/{i}")
                draw_gray(label, size, rng).save(folder / f"{label}_{i:04d}.png")
    _write_marker(root, params, complete=True)
    return {**summary, "created": True}


# --- photo-like RGB JPEGs ----------------------------------------------------------------------

PALETTES = {
    # (sky/top colours, ground/bottom colours, shape colours)
    "dusk": ([(250, 140, 60), (230, 90, 70), (200, 80, 120)], [(70, 30, 80), (40, 20, 60), (110, 50, 60)],
             [(255, 220, 120), (255, 200, 90), (250, 240, 180)]),
    "forest": ([(150, 190, 140), (120, 170, 200), (180, 200, 160)], [(30, 70, 30), (50, 90, 40), (20, 50, 25)],
               [(20, 100, 40), (40, 130, 50), (70, 110, 30)]),
    "sea": ([(150, 200, 240), (110, 170, 230), (190, 220, 245)], [(20, 60, 120), (30, 90, 150), (10, 40, 90)],
            [(230, 240, 250), (60, 120, 190), (20, 70, 140)]),
}


def _jitter(colour, rng: random.Random, amount: int = 25):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


def draw_photo(label: str, key: str):
    """One photo-like RGB picture of class ``label``; every random choice comes from ``key``."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(key)
    nprng = np.random.default_rng(_digest_seed(key))
    width = rng.randint(*WIDTH_RANGE)
    height = max(200, round(width * rng.uniform(*ASPECT_RANGE)))
    top_colours, bottom_colours, shape_colours = PALETTES[label]
    top = np.array(_jitter(rng.choice(top_colours), rng), dtype=np.float32)
    bottom = np.array(_jitter(rng.choice(bottom_colours), rng), dtype=np.float32)

    # a smooth gradient along a mostly vertical direction, with a gentle horizon curve
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    tilt = rng.uniform(-0.3, 0.3)
    t = ys + tilt * (xs - 0.5) + 0.05 * np.sin(xs * rng.uniform(2, 8) + rng.uniform(0, 6.3))
    t = np.clip((t - rng.uniform(0.2, 0.4)) / rng.uniform(0.3, 0.6), 0.0, 1.0)[..., None]
    pixels = top * (1 - t) + bottom * t
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")

    pen = ImageDraw.Draw(image)
    scale = min(width, height)
    if label == "dusk":  # a sun and a few long clouds
        r = scale * rng.uniform(0.08, 0.18)
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.15, 0.5) * height
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter(rng.choice(shape_colours), rng, 10))
        for _ in range(rng.randint(1, 4)):
            x, y = rng.uniform(0, width), rng.uniform(0, 0.5) * height
            w, h = scale * rng.uniform(0.2, 0.6), scale * rng.uniform(0.02, 0.05)
            pen.ellipse([x - w, y - h, x + w, y + h], fill=_jitter((200, 110, 130), rng))
    elif label == "forest":  # rows of tree-like triangles
        for _ in range(rng.randint(6, 16)):
            x = rng.uniform(0, width)
            base = rng.uniform(0.55, 1.0) * height
            h = scale * rng.uniform(0.2, 0.5)
            w = h * rng.uniform(0.3, 0.5)
            pen.polygon([(x, base - h), (x - w, base), (x + w, base)], fill=_jitter(rng.choice(shape_colours), rng))
    else:  # sea: horizontal wave bands and a boat or two
        for _ in range(rng.randint(5, 12)):
            y = rng.uniform(0.45, 1.0) * height
            points = [(x, y + scale * 0.015 * math.sin(x / scale * rng.uniform(10, 30)))
                      for x in range(0, width + 20, 20)]
            pen.line(points, fill=_jitter(rng.choice(shape_colours), rng), width=max(2, scale // 120))
        for _ in range(rng.randint(0, 2)):
            x, y = rng.uniform(0.1, 0.9) * width, rng.uniform(0.45, 0.7) * height
            s = scale * rng.uniform(0.04, 0.08)
            pen.polygon([(x, y - 2 * s), (x, y), (x + s, y)], fill=(240, 240, 235))
    # a little clutter every class shares
    for _ in range(rng.randint(0, 3)):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = scale * rng.uniform(0.02, 0.08)
        pen.ellipse([x - r, y - r, x + r, y + r], fill=_jitter((128, 128, 128), rng, 60))

    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 2.0) * scale / 400))
    noisy = np.asarray(image, dtype=np.float32) + nprng.normal(0.0, rng.uniform(3, 9), (height, width, 1))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def make_rgb(root, *, seed: int = 0, train_per_class: int = 80, val_per_class: int = 30) -> dict:
    root = Path(root)
    params = {"version": VERSION, "seed": seed, "train_per_class": train_per_class,
              "val_per_class": val_per_class, "classes": list(RGB_CLASSES), "quality": JPEG_QUALITY}
    summary = {"root": str(root), "classes": list(RGB_CLASSES),
               "train": train_per_class * len(RGB_CLASSES), "val": val_per_class * len(RGB_CLASSES)}
    if _fresh(root, params):
        return {**summary, "created": False}
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in RGB_CLASSES:
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                picture = draw_photo(label, f"cvkit-bench-rgb/{seed}/{split}/{label}/{i}")
                picture.save(folder / f"{label}_{i:04d}.jpg", quality=JPEG_QUALITY)
    _write_marker(root, params, complete=True)
    return {**summary, "created": True}


def make_predict(root, *, seed: int = 0, count: int = 200) -> dict:
    """``count`` JPEGs in one flat folder, the classes in turn (the file name starts with the class)."""
    root = Path(root)
    params = {"version": VERSION, "seed": seed, "count": count, "classes": list(RGB_CLASSES),
              "quality": JPEG_QUALITY}
    summary = {"root": str(root), "images": count}
    if _fresh(root, params):
        return {**summary, "created": False}
    for i in range(count):
        label = RGB_CLASSES[i % len(RGB_CLASSES)]
        picture = draw_photo(label, f"cvkit-bench-predict/{seed}/{i}")
        picture.save(root / f"{label}_{i:04d}.jpg", quality=JPEG_QUALITY)
    _write_marker(root, params, complete=True)
    return {**summary, "created": True}


def build_all(root=".bench-data", *, quick: bool = False, seed: int = 0, which=("gray", "rgb", "predict"),
              smoke: bool = False) -> dict:
    """Draw (or reuse) the trees the benchmark needs; returns ``{name: summary}``."""
    size = "smoke" if smoke else "quick" if quick else "full"
    sizes = SIZES[size]
    root = Path(root) / size
    makers = {"gray": make_gray, "rgb": make_rgb, "predict": make_predict}
    return {name: makers[name](root / name, seed=seed, **sizes[name]) for name in which}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default=".bench-data", help="cache folder [.bench-data]")
    parser.add_argument("--quick", action="store_true", help="the tiny sizes of run.py --quick")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(build_all(args.root, quick=args.quick, seed=args.seed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
