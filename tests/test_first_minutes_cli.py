"""The first ten minutes with cvkit's command line (issue 11): help that shows defaults, usage errors
in one line, a closed pipe, output in pipes and in a narrow terminal, the demo set's size.

The narrow terminal is a real one: a pseudo-terminal 40 columns wide, COLUMNS unset, so cvkit sees
what a person's terminal tells it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import in_terminal, words

PYTHON_CVKIT = [sys.executable, "-m", "cvkit"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return {**env, **extra}


def piped(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    """Run cvkit with stdout and stderr pipes, as ``cvkit ... | tee log`` does."""
    return subprocess.run([*PYTHON_CVKIT, *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(**env), timeout=240)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A small demo set (drawn with the demo's own size options) and one trained run."""
    cwd = tmp_path_factory.mktemp("first-minutes")
    r = piped(["data", "demo", "data/shapes", "--train-per-class", "8", "--val-per-class", "4",
               "--size", "32"], cwd)
    assert r.returncode == 0, r.stderr
    r = piped(["train", "data/shapes", "--epochs", "1", "--workers", "0", "--out", "runs/first"], cwd,
              COLUMNS="40")
    assert r.returncode == 0, r.stderr
    return cwd, r


# 9. the demo set's size ---------------------------------------------------------------------------

def test_data_demo_draws_the_size_asked_for(workdir):
    cwd, _ = workdir
    from PIL import Image

    counts = {split: len(list((cwd / "data" / "shapes" / split).rglob("*.png"))) for split in ("train", "val")}
    assert counts == {"train": 4 * 8, "val": 4 * 4}
    assert Image.open(next((cwd / "data" / "shapes" / "val").rglob("*.png"))).size == (32, 32)
    r = piped(["data", "demo", "data/shapes", "--train-per-class", "8", "--val-per-class", "4", "--size", "32",
               "--json"], cwd)
    assert r.returncode == 0 and '"created": false' in r.stdout  # the same sizes: the tree is kept


# 1. help that shows defaults ----------------------------------------------------------------------

def _commands():
    from typer.main import get_command

    from cvkit.cli import make_app

    root = get_command(make_app())
    stack = [(name, cmd) for name, cmd in root.commands.items()]
    while stack:
        name, cmd = stack.pop()
        if hasattr(cmd, "commands"):
            stack += [(f"{name} {sub}", c) for sub, c in cmd.commands.items()]
        else:
            yield name, cmd


def test_every_option_has_a_sentence_and_says_its_default():
    problems = []
    for name, cmd in _commands():
        for param in cmd.params:
            if param.name == "ctx":
                continue
            text = (param.help or "").strip()
            if not text.endswith((".", ")")) or " ." in text or len(text.split()) < 2:
                problems.append(f"{name} {param.name}: help {text!r}")
            flag = getattr(param, "is_flag", False)
            shows = param.show_default is not False and (param.default is not None or isinstance(param.show_default, str))
            if not (flag or param.required or shows or param.show_default is False):
                problems.append(f"{name} {param.name}: default {param.default!r} not shown")
    assert not problems, "\n".join(problems)


def test_train_help_at_80_columns_shows_defaults_in_the_chapters_words(tmp_path):
    r = piped(["train", "--help"], tmp_path, COLUMNS="80")
    assert r.returncode == 0
    text = words(r.stdout)
    for shown in ("[default: 25]", "[default: net]", "[default: default]", "[default: 32]", "the recipe's",
                  "chapter's StepLR", "momentum 0.9", "[default: auto]", "chapter: SGD lr"):
        assert shown in text, shown
    assert " . " not in text and not re.search(r"\w \.", text)  # no help ending in a stray " ."
    assert "<bool>" not in text  # a flag takes no value


# 2. usage errors: one line, a suggestion, exit 2 --------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["train", "data", "--epoch", "2"], "no such option --epoch (did you mean --epochs?)"),
    (["trian"], "no such command 'trian' (did you mean 'train'?)"),
    (["predict"], "missing argument 'IMAGE'"),
    (["eval", "--batch-size", "zero"], "'--batch-size'"),
    (["data", "demo", "x", "--size", "3"], "'--size'"),
    (["predict", "x.png", "--csv", "--json"], "choose one of --csv and --json"),
    (["list", "--jsn"], "did you mean --json?"),
])
def test_usage_errors_are_one_line_with_exit_2(cli, args, expected):
    r = cli(*args)
    assert r.code == 2, r
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1, r.err
    assert lines[0].startswith("cvkit: error: cvkit") and expected in lines[0], lines[0]
    assert "--help'" in lines[0] and r.out == ""


def test_a_plugin_commands_usage_error_is_one_line_too(cli, fake_dist):
    fake_dist("cvkit-hello", {"cvkit_hello_plugin": """
import typer
import cvkit

@cvkit.hookimpl
def register_commands(app):
    @app.command("hello")
    def hello(name: str, times: int = 1):
        print(("hello " + name + " ") * times)
"""}, {"hello": "cvkit_hello_plugin"})
    r = cli("hello", "you")
    assert r.out.strip() == "hello you", r
    r = cli("hello", "you", "--time", "2")
    assert r.code == 2 and r.err.strip() == ("cvkit: error: cvkit hello: no such option --time "
                                             "(did you mean --times?); see 'cvkit hello --help'")


# 3. a closed pipe ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["eval", "--checkpoint", "runs/first"], ["list"], ["eval", "--json"],
                                  ["predict", "data/shapes/val", "--csv"]])
def test_a_closed_pipe_ends_cvkit_quietly(workdir, args):
    cwd, _ = workdir
    read, write = os.pipe()
    os.close(read)  # the reader is gone before cvkit writes a byte: every write fails with EPIPE
    proc = subprocess.run([*PYTHON_CVKIT, *args], stdout=write, stderr=subprocess.PIPE, cwd=cwd,
                          env=_env(), timeout=240)
    os.close(write)
    assert proc.stderr == b""
    assert proc.returncode == 141  # 128 + SIGPIPE, what a shell reports for `cat` in its place


def test_head_of_a_long_output(workdir):
    cwd, _ = workdir
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {' '.join(PYTHON_CVKIT)} predict data/shapes "
                                         "--csv 2>err.txt | head -1; echo \"status $?\""],
                          capture_output=True, text=True, cwd=cwd, env=_env(), timeout=240)
    lines = proc.stdout.splitlines()
    assert lines[0] == "path,rank,label,probability"
    assert lines[-1] in ("status 0", "status 141")  # 0 when all of it fitted into the pipe before head left
    assert "Traceback" not in (cwd / "err.txt").read_text()


# 4. pipes and narrow terminals --------------------------------------------------------------------

def test_in_a_pipe_commands_to_copy_stay_whole(workdir):
    cwd, r = workdir  # trained with COLUMNS=40 and stdout a pipe
    assert "  evaluate: cvkit eval --checkpoint runs/first/best.pt\n" in r.stdout
    assert "  predict:  cvkit predict IMAGE... --checkpoint runs/first/best.pt\n" in r.stdout
    done = next(line for line in r.stdout.splitlines() if line.startswith("done in"))
    assert "train images/s" in done  # the summary is one line
    row = next(line for line in r.stdout.splitlines() if line.split()[:1] == ["1/1"])
    assert len(row.split()) == 8 and row.split()[-1] == "best"  # every column, in a pipe


def test_a_narrow_terminal_keeps_the_numbers_and_the_best_marker(workdir):
    cwd, _ = workdir
    code, screen = in_terminal(["train", "data/shapes", "--epochs", "2", "--workers", "0", "--lr", "0.05",
                                "--out", "runs/narrow"], 40, cwd)
    assert code == 0, screen
    rows = [line.split() for line in screen.splitlines() if re.match(r"\s+\d/2\s", line)]
    assert len(rows) == 2, screen
    for row in rows:
        assert all(re.fullmatch(r"\d+/\d|\d+\.\d+|best", cell) for cell in row), row  # whole numbers, no "…"
    assert any(row[-1] == "best" for row in rows)
    assert "(not shown at 40 columns: time, lr, train acc, val loss; all of them are in metrics.csv)" in screen
    header = next(line for line in screen.splitlines() if "epoch" in line and "val acc" in line)
    assert header.split() == ["epoch", "train", "loss", "val", "acc"]


@pytest.mark.parametrize("args", [["list"], ["inspect-grad", "--model", "net", "--step"],
                                  ["eval", "--checkpoint", "runs/first"]])
def test_narrow_terminal_tables_cut_no_value(workdir, args):
    cwd, _ = workdir
    code, screen = in_terminal(args, 40, cwd)
    assert code == 0, screen
    cut = [line for line in screen.splitlines() if "…" in line and "more below (--depth)" not in line]
    assert not cut, "\n".join(cut)
    borders = [line for line in screen.splitlines() if line[:1] in "┏┡└╭╰━─"]
    assert borders and all(len(line) <= 40 for line in borders), borders
