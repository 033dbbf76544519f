"""The commands that README.md and docs/usage.md show, run as written, in a fresh folder, offline.

Each ``cvkit ...`` line of a fenced shell block runs in order in one working folder (so ``cvkit eval``
finds the run that ``cvkit train`` made), after the files the examples name are drawn there
(``photo.jpg``, ``photos/``, ``my.yaml`` = the YAML block of docs/usage.md, ...). Two changes keep it
short: each ``train`` runs one epoch (``--epochs 1``, or one more than the run it resumes) and every
set is small (``cvkit data demo`` draws 12 training and 4 validation pictures per class; the claim
about the full demo set's accuracy has a test of its own). The ``--opt`` examples of the prose run
together in one more ``train``. Commands that need the internet (ImageNet weights, dataset
downloads) say so in their comment (``needs the internet``); here they must fail in one clear line,
not a traceback, with every download pointed at a closed port, and their online run is skipped
unless ``CVKIT_ONLINE_TESTS=1``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO

ONLINE_MARK = "needs the internet"  # the comment that marks, in the docs, an example that cannot run offline
RESUMED_RUN = "runs/net-20261127-232437"  # the run the README resumes: the first training run, copied


def doc_commands(doc: str) -> list[str]:
    """The ``cvkit`` command lines of the shell blocks of ``doc``, comments removed."""
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", (REPO / doc).read_text(), re.S)
    commands = [shlex.split(line, comments=True) for block in blocks for line in block.splitlines()]
    return [shlex.join(tokens) for tokens in commands if tokens[:1] == ["cvkit"]]


def online_commands(doc: str) -> list[str]:
    """The examples whose comment says they need the internet."""
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", (REPO / doc).read_text(), re.S)
    lines = [line for block in blocks for line in block.splitlines()
             if line.startswith("cvkit ") and ONLINE_MARK in line.partition("#")[2]]
    return [shlex.join(shlex.split(line, comments=True)) for line in lines]


ONLINE = set(online_commands("README.md") + online_commands("docs/usage.md"))


def inline_options(doc: str) -> list[str]:
    """The ``--opt KIND.KEY=VALUE`` examples of the prose, e.g. ``--opt optimizer.momentum=0.5``."""
    return re.findall(r"`--opt ([a-z_]+\.[a-z_]+=[^`\s]+)`", (REPO / doc).read_text())


def yaml_block(doc: str) -> str:
    return re.search(r"```yaml\n(.*?)```", (REPO / doc).read_text(), re.S).group(1)


def shortened(argv: list[str]) -> list[str]:
    """``train`` for one epoch (a resumed run: one more than it holds)."""
    if argv[:1] != ["train"]:
        return argv
    if "--epochs" in argv:
        at = argv.index("--epochs")
        argv = argv[:at] + argv[at + 2:]
    return [*argv, "--epochs", "2" if "--resume" in argv else "1"]


def _copy_images(src: Path, dst: Path, per_class: int) -> None:
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / folder.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(folder.iterdir())[:per_class]:
            shutil.copy(image, dst / folder.name / image.name)


def prepare(cwd: Path) -> None:
    """The files the examples name, from the demo shapes (drawn small here; the examples draw their own)."""
    from cvkit_plugins.demo import make_shapes

    shapes = cwd / "drawn"
    make_shapes(shapes, train_per_class=8, val_per_class=4, size=32, seed=5)
    _copy_images(shapes / "train", cwd / "data" / "flat", 8)
    for split in ("train", "val"):
        _copy_images(shapes / split, cwd / "data" / "hymenoptera" / split, 2)
    _copy_images(shapes / "val", cwd / "data" / "other", 4)
    first = next((shapes / "val" / "circle").iterdir())
    Image.open(first).convert("RGB").save(cwd / "photo.jpg")
    Image.open(first).convert("RGB").save(cwd / "cat.jpg")
    for name in ("photos", "more"):
        _copy_images(shapes / "val", cwd / name / "x", 1)
        for image in (cwd / name / "x").rglob("*.png"):
            image.rename(cwd / name / image.name)
            Image.open(cwd / name / image.name).convert("RGB").save(cwd / name / f"{image.stem}.jpg")
        shutil.rmtree(cwd / name / "x")
    (cwd / "my.yaml").write_text(yaml_block("docs/usage.md"))


def _shell_part(argv: list[str]) -> tuple[list[str], list[str]]:
    """``[..., '>', 'x.json']`` -> the command and the redirection or pipe after it."""
    for at, arg in enumerate(argv):
        if arg in ("|", ">"):
            return argv[:at], argv[at:]
    return argv, []


def _shell_result_ok(shell: list[str], out: str, cwd: Path) -> bool:
    """``> FILE.json|csv``: the output is written there and parses; ``| jq .KEY``: JSON with KEY."""
    if shell[0] == ">":
        (cwd / shell[1]).write_text(out)
        if shell[1].endswith(".json"):
            return bool(json.loads(out))
        return len(list(csv.DictReader(io.StringIO(out)))) >= 1
    key = shell[-1].lstrip(".")
    return shell[1] == "jq" and key in json.loads(out)


def run_examples(cli, doc: str, cwd: Path) -> list[str]:
    """Run each example; returns what went wrong, one entry per command."""
    problems = []
    options = [arg for opt in inline_options(doc) for arg in ("--opt", opt)]
    for command in [*doc_commands(doc), shlex.join(["cvkit", "train", "data/shapes", *options])]:
        newest = max((cwd / "runs").glob("net-*"), key=lambda p: p.stat().st_mtime, default=None)
        argv = [arg.replace("runs/net-...", str(newest)) for arg in shlex.split(command)[1:]]
        argv, shell = _shell_part(argv)
        if "--resume" in argv and not (cwd / RESUMED_RUN).exists():
            first = sorted((cwd / "runs").glob("net-*"))[0]
            shutil.copytree(first, cwd / RESUMED_RUN)
        started = time.monotonic()
        r = cli(*shortened(argv))
        print(f"{time.monotonic() - started:6.1f} s  {command}", file=sys.__stderr__)
        if command in ONLINE:
            lines = [line for line in r.err.splitlines() if line.strip()]
            if r.code in (0, 1) or len(lines) != 1 or "Traceback" in r.err:
                problems.append(f"{command}: offline, expected one error line, got exit {r.code}: {r.err[-500:]}")
        elif r.code != 0:
            problems.append(f"{command}: exit {r.code}: {r.err[-500:]}")
        elif shell and not _shell_result_ok(shell, r.out, cwd):
            problems.append(f"{command}: its output does not fit {' '.join(shell)}: {r.out[:300]}")
    return problems


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One working folder for both documents, offline, with the demo set drawn small."""
    import cvkit_plugins.demo as demo

    cwd = tmp_path_factory.mktemp("docs")
    real_make_shapes = demo.make_shapes

    def small_shapes(root, **kwargs):
        return real_make_shapes(root, **{**kwargs, "train_per_class": 12, "val_per_class": 4})

    with pytest.MonkeyPatch.context() as m:
        m.chdir(cwd)
        m.setattr(demo, "make_shapes", small_shapes)  # `cvkit data demo` draws 12 + 4 per class, not 1000 + 100
        m.setenv("TORCH_HOME", str(cwd / "torch-home"))  # no cached weights
        for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
            m.setenv(var, "http://127.0.0.1:9")  # every download fails at once, as offline
        m.delenv("no_proxy", raising=False)
        m.delenv("NO_PROXY", raising=False)
        prepare(cwd)
        yield cwd


def test_the_docs_show_commands_and_online_ones_are_known():
    commands = doc_commands("README.md") + doc_commands("docs/usage.md")
    assert len(commands) >= 25 and "cvkit data demo data/shapes" in commands
    # what may not run offline: the chapter's ImageNet weights and a dataset download, nothing else
    assert ONLINE == {"cvkit train data/hymenoptera --model resnet18-frozen",
                      "cvkit data download cifar10 data/cifar"}, ONLINE
    assert "optimizer.weight_decay=0.01" in inline_options("README.md")


@pytest.mark.slow
@pytest.mark.parametrize("doc", ["README.md", "docs/usage.md"])
def test_every_example_of_the_docs_runs(cli, workspace, doc):
    problems = run_examples(cli, doc, workspace)
    assert not problems, "\n".join(problems)
    assert (workspace / "data" / "shapes" / "train").is_dir()
    assert list((workspace / "runs").glob("*/best.pt"))


@pytest.mark.parametrize("command", sorted(ONLINE))
def test_online_examples_run_online(cli, tmp_path, monkeypatch, command):
    """Offline, the walk above holds them to one clear error line; with the internet they must run."""
    if os.environ.get("CVKIT_ONLINE_TESTS") != "1":
        pytest.skip("needs the internet (set CVKIT_ONLINE_TESTS=1 where it can be reached)")
    monkeypatch.chdir(tmp_path)
    prepare(tmp_path)
    r = cli(*shortened(shlex.split(command)[1:]))
    assert r.code == 0, r.err
