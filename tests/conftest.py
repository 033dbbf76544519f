"""Shared test fixtures.

``fake_dist`` installs a throw-away distribution (modules + a ``*.dist-info`` with ``cvkit`` entry
points) on ``sys.path``, exactly what pip leaves behind, so plugin loading is tested through real
entry-point discovery. ``cli`` runs ``cvkit.cli.main`` in-process and returns its exit code and output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

for _var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE", "LINES"):
    os.environ.pop(_var, None)
os.environ.update(COLUMNS="200", NO_COLOR="1")  # before cvkit.ui is imported, below

from cvkit.plugins import set_plugins  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch):
    """Each test starts with no cached plugins and no cvkit plugin variables from the caller."""
    for var in ("CVKIT_DISABLE_PLUGINS", "CVKIT_DISABLE_PLUGIN_AUTOLOAD", "CVKIT_STRICT_PLUGINS",
                "CVKIT_VERBOSE", "CVKIT_TRUST_CHECKPOINTS"):  # --trust-checkpoints sets the last one
        monkeypatch.delenv(var, raising=False)
    set_plugins(None)
    yield
    set_plugins(None)


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """``fake_dist(name, modules={"mod": "source"}, entry_points={"ep": "mod"})`` -> site folder."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    added_modules = []

    def install(name: str, modules: dict[str, str], entry_points: dict[str, str], version: str = "1.0"):
        for mod, source in modules.items():
            (site / f"{mod}.py").write_text(textwrap.dedent(source))
            added_modules.append(mod)
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[cvkit]\n{lines}\n")
        return site

    yield install
    for mod in added_modules:
        sys.modules.pop(mod, None)


def words(text: str) -> str:
    """``text`` with every run of whitespace (line breaks of wrapped output included) one space."""
    return " ".join(text.split())


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """``cli("list", "models", "--json")`` -> Result(code, out, err), run in this process."""
    from cvkit.cli import main

    def run(*args: str) -> Result:
        set_plugins(None)
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def train_run(out: Path, *args: str) -> Path:
    """``cvkit train ARGS --out OUT --json`` in this process, for module fixtures; returns OUT."""
    from cvkit.cli import main

    set_plugins(None)
    try:
        main(["train", *args, "--out", str(out), "--json"])
    except SystemExit as exc:
        assert not exc.code, f"cvkit train {' '.join(args)}: exit {exc.code}"
    return out


def run_cvkit(*args: str, env: dict | None = None, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m cvkit ARGS`` in a fresh interpreter (for what needs a clean process)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cvkit", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


# Runs python with torch made unimportable: what works here works on a machine without PyTorch.
# ``python no_torch.py -m MODULE ARGS`` or ``python no_torch.py SCRIPT ARGS``.
NO_TORCH = textwrap.dedent("""
    import runpy, sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith(("torch.", "torchvision")):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
    script, sys.argv = sys.argv[1], sys.argv[1:]
    if script == "-m":
        sys.argv = sys.argv[1:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(script, run_name="__main__")
""")


def no_torch_python(tmp_path: Path) -> list[str]:
    """The start of a command line that runs python with torch unimportable (see NO_TORCH)."""
    blocker = tmp_path / "no_torch.py"
    blocker.write_text(NO_TORCH)
    return [sys.executable, str(blocker)]


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def in_terminal(args: list[str], columns: int, cwd=None, timeout: float = 240) -> tuple[int, str]:
    """Run ``python -m cvkit ARGS`` on a pseudo-terminal ``columns`` wide with COLUMNS unset, as a
    person's terminal runs it; returns (exit code, the text it showed: colours removed, each redrawn
    progress line on a line of its own)."""
    import fcntl
    import pty
    import struct
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "cvkit", *args], stdin=child, stdout=child, stderr=child,
                            cwd=cwd, env={**env, "TERM": "xterm"}, close_fds=True)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    code = proc.wait(timeout=timeout)
    raw = b"".join(chunks).decode(errors="replace").replace("\x1b[2K", "\n")  # erase line: a redraw
    return code, ANSI.sub("", raw).replace("\r", "")
