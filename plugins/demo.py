"""Built-in plugin: the ``shapes`` demo dataset, drawn on first use so cvkit can train offline.

Each picture is one filled shape (circle, square, triangle or star) of random size, position,
rotation and colour on a noisy two-tone background with a few stray strokes. The classes stay apart
at the 1x32x32 grayscale that ``net`` sees (the shape is always clearly lighter than its
background), but size, position, rotation and clutter keep it from being a lookup table.

The amount of variation and the default picture counts are tuned together: with them the chapter's
LeNet (SGD, lr 0.01, momentum 0.9, batch 32) reaches about 95% validation accuracy after 5 epochs.
Shapes anywhere in the picture at any size, or a few hundred pictures per class, keep it near
chance for that long. Drawing uses PIL only, so this module imports no torch.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import shutil
from pathlib import Path

import cvkit
from cvkit.errors import UsageError

SHAPES = ("circle", "square", "triangle", "star")
MARKER = "cvkit-demo.json"
SPLITS = ("train", "val")
MIN_CONTRAST = 90  # least grey-level gap between shape and background, so grayscale keeps the shape
BACKGROUND_GREYS = (0, 150)  # grey levels of the background; the shape is lighter
SIZE_RANGE = (0.50, 0.85)  # diameter of the shape's circumscribed circle, as a fraction of the picture
POSITION_JITTER = 0.5  # 1: anywhere the shape fits; 0: always centred
MAX_ROTATION = 180  # degrees either way
NOISE_RANGE = (0.05, 0.2)  # share of pixel noise blended into the background
MAX_CLUTTER = 3  # faint random strokes behind the shape
SUPERSAMPLE = 4  # shapes are drawn this much larger and scaled down, for smooth edges
TRAIN_PER_CLASS = 1000  # fewer leaves too few SGD steps per epoch for LeNet to learn in a few epochs
VAL_PER_CLASS = 100


def make_shapes(root, *, seed: int = 0, train_per_class: int = TRAIN_PER_CLASS,
                val_per_class: int = VAL_PER_CLASS, size: int = 64, classes=SHAPES) -> dict:
    """Draw ``root/{train,val}/<class>/<class>_NNNN.png``; returns a summary of the tree.

    The same parameters give byte-identical files. A folder that already holds a complete tree made
    with the same parameters is reused as it is; a previous shapes tree with other parameters, or a
    half-written one, is redrawn; any other non-empty folder is refused, so user data is never mixed
    with (or deleted for) demo pictures. The marker ``cvkit-demo.json`` says ``complete: true`` only
    once the last picture is written, so a run that dies half-way is redrawn, not trusted.
    """
    root = Path(root)
    seed, train_per_class, val_per_class, size = (
        _whole_number(name, value) for name, value in
        (("seed", seed), ("train_per_class", train_per_class), ("val_per_class", val_per_class), ("size", size)))
    classes = (classes,) if isinstance(classes, str) else tuple(classes)
    unknown = [c for c in classes if c not in SHAPES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise UsageError(f"shapes dataset: classes must be distinct names from {', '.join(SHAPES)}, "
                         f"got {', '.join(classes) or 'none'}")
    if train_per_class < 1 or val_per_class < 1:
        raise UsageError("shapes dataset: train_per_class and val_per_class must be at least 1")
    if size < 16:
        raise UsageError(f"shapes dataset: size must be at least 16 pixels, got {size}")
    params = {"seed": seed, "train_per_class": train_per_class, "val_per_class": val_per_class,
              "size": size, "classes": list(classes)}
    counts = {"train": train_per_class * len(classes), "val": val_per_class * len(classes)}
    summary = {"root": str(root), "classes": list(classes), "counts": counts, "seed": seed,
               "size": size, "created": True}

    marker = _read_marker(root)
    if marker is not None and marker.get("complete") and marker.get("params") == params:
        return {**summary, "created": False}
    _prepare(root, marker)

    _write_marker(root, params, complete=False)
    per_class = {"train": train_per_class, "val": val_per_class}
    for split in SPLITS:
        for label in classes:
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(per_class[split]):
                # one generator per picture: a picture does not depend on how many come before it
                rng = random.Random(f"cvkit-shapes/{seed}/{split}/{label}/{index}")
                draw_shape(label, size, rng).save(folder / f"{label}_{index:04d}.png", compress_level=3)
    _write_marker(root, params, complete=True)
    return summary


def _whole_number(name: str, value) -> int:
    """``value`` as an int; options typed on the command line may arrive as strings."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or number != float(value):
        raise UsageError(f"shapes dataset: {name} must be a whole number, got {value!r}")
    return number


def _read_marker(root: Path) -> dict | None:
    try:
        data = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == "cvkit-shapes" else None


def _write_marker(root: Path, params: dict, *, complete: bool) -> None:
    """Replace the marker in one step, so a reader never sees half of it."""
    tmp = root / f".{MARKER}.tmp"
    tmp.write_text(json.dumps({"kind": "cvkit-shapes", "complete": complete, "params": params},
                              indent=2) + "\n")
    os.replace(tmp, root / MARKER)


def _prepare(root: Path, marker: dict | None) -> None:
    """Make ``root`` an empty folder, clearing it only when it holds nothing but an old shapes tree."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root}: exists and is not a folder; choose another folder for the shapes dataset")
    root.mkdir(parents=True, exist_ok=True)
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        return
    ours = {MARKER, *SPLITS}
    if marker is None or any(p.name not in ours for p in entries):
        raise UsageError(f"{root}: folder is not empty and is not a cvkit shapes dataset; "
                         "choose an empty or new folder for the shapes dataset")
    for split in SPLITS:
        if (root / split).is_dir():
            shutil.rmtree(root / split)
    (root / MARKER).unlink()


def draw_shape(label: str, size: int, rng: random.Random):
    """One ``size``x``size`` RGB picture of ``label``, every random choice taken from ``rng``."""
    from PIL import Image, ImageDraw, ImageFilter

    shape_grey, background_grey = _contrasting_greys(rng)
    image = _background(size, background_grey, rng)

    # a few faint strokes the model has to learn to ignore
    clutter = ImageDraw.Draw(image)
    for _ in range(rng.randint(0, MAX_CLUTTER)):
        points = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(2)]
        grey = _clamp(background_grey + rng.choice((-1, 1)) * rng.randint(20, 40))
        clutter.line(points, fill=_colour_with_grey(grey, rng), width=max(1, size // 40))

    # circumradius: the shape stays inside the picture whatever its rotation
    radius = rng.uniform(*SIZE_RANGE) * size / 2
    cx = size / 2 + POSITION_JITTER * rng.uniform(radius - size / 2, size / 2 - radius)
    cy = size / 2 + POSITION_JITTER * rng.uniform(radius - size / 2, size / 2 - radius)
    big = size * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    pen = ImageDraw.Draw(mask)
    s = SUPERSAMPLE
    if label == "circle":
        r = radius * rng.uniform(0.8, 1.0)
        pen.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
    else:
        angle = -math.pi / 2 + math.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
        pen.polygon([((cx + x) * s, (cy + y) * s) for x, y in _outline(label, radius, angle, rng)], fill=255)
    mask = mask.reduce(SUPERSAMPLE)
    image.paste(Image.new("RGB", (size, size), _colour_with_grey(shape_grey, rng)), (0, 0), mask)

    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9) * size / 64))
    return image


def _outline(label: str, radius: float, angle: float, rng: random.Random) -> list[tuple[float, float]]:
    if label == "square":
        corners, radii = 4, [radius]
    elif label == "triangle":
        corners, radii = 3, [radius]
    elif label == "star":
        corners, radii = 5, [radius, radius * rng.uniform(0.38, 0.5)]
    else:
        raise ValueError(f"no outline for {label!r}")
    steps = corners * len(radii)
    return [(radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / steps),
             radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / steps)) for i in range(steps)]


def _contrasting_greys(rng: random.Random) -> tuple[int, int]:
    """Grey levels of shape and background, the shape at least MIN_CONTRAST lighter."""
    background = rng.randint(*BACKGROUND_GREYS)
    return rng.randint(min(255, background + MIN_CONTRAST), 255), background


def _colour_with_grey(grey: int, rng: random.Random) -> tuple[int, int, int]:
    """A random colour whose grey level (ITU-R 601, as PIL's ``convert("L")``) is about ``grey``."""
    for _ in range(20):
        r, b = rng.randint(0, 255), rng.randint(0, 255)
        g = round((grey * 1000 - 299 * r - 114 * b) / 587)
        if 0 <= g <= 255:
            return r, g, b
    return grey, grey, grey


def _background(size: int, grey: int, rng: random.Random):
    """Two colours of about ``grey`` blended along a random direction, plus pixel noise."""
    from PIL import Image

    first = Image.new("RGB", (size, size), _colour_with_grey(_clamp(grey + rng.randint(-15, 15)), rng))
    second = Image.new("RGB", (size, size), _colour_with_grey(_clamp(grey + rng.randint(-15, 15)), rng))
    ramp = _ramp(size).rotate(rng.uniform(0, 360))
    image = Image.composite(first, second, ramp)
    noise = Image.frombytes("L", (size, size), rng.randbytes(size * size)).convert("RGB")
    return Image.blend(image, noise, rng.uniform(*NOISE_RANGE))


@functools.lru_cache(maxsize=4)
def _ramp(size: int):
    """A ``size``x``size`` black-to-white ramp, made once per size (scaling it is the slow part)."""
    from PIL import Image

    return Image.linear_gradient("L").resize((size, size))


def _clamp(value: float) -> int:
    return int(min(255, max(0, value)))


def build_shapes(root: str, *, split: str, transform, seed: int = 0,
                 train_per_class: int = TRAIN_PER_CLASS, val_per_class: int = VAL_PER_CLASS, size: int = 64):
    """The ``shapes`` dataset: drawn into ``root`` on first use, then read as an imagefolder."""
    from cvkit_plugins.datasets import build_imagefolder

    make_shapes(root, seed=seed, train_per_class=train_per_class, val_per_class=val_per_class, size=size)
    return build_imagefolder(root, split=split, transform=transform)


@cvkit.hookimpl
def register_datasets(register):
    register("shapes", build_shapes,
             help="built-in synthetic demo data (circle, square, triangle, star), "
                  "drawn into ROOT on first use; options: seed, train_per_class, val_per_class, size")
