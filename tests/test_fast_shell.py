"""The shell commands that only describe cvkit never import torch (each runs in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from cvkit import __version__
from conftest import REPO, run_cvkit

PROBE = """
import json, sys
from cvkit.cli import main
argv = json.loads(sys.argv[1])
code = 0
try:
    main(argv)
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
sys.stdout.flush()
print("PROBE " + json.dumps({"code": code, "torch": "torch" in sys.modules,
                              "torchvision": "torchvision" in sys.modules}), file=sys.stderr)
"""


def probe(*argv: str) -> tuple[dict, str]:
    """Run ``main(argv)`` in a fresh interpreter; -> (what it imported and its exit code, stdout)."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(argv))], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    last = [line for line in proc.stderr.splitlines() if line.startswith("PROBE ")]
    assert last, proc.stderr
    return json.loads(last[-1][len("PROBE "):]), proc.stdout


@pytest.mark.parametrize("argv, expect", [
    (["--help"], ["inspect-grad", "plugins", "list", "device"]),
    (["plugins"], ["cvkit plugins", "resnet18", "loaded"]),
    (["plugins", "--json"], ['"distribution": "cvkit"']),
    (["list", "models"], ["net", "resnet18-frozen", "1x32x32"]),
    (["list"], ["models", "losses", "cross-entropy", "imagefolder"]),
    (["list", "optimizers", "--json"], ['"adamw"']),
    (["inspect-grad", "--help"], ["--weights", "--step"]),
])
def test_describing_commands_do_not_import_torch(argv, expect):
    result, out = probe(*argv)
    assert result["code"] == 0, out
    for word in expect:
        assert word in out, (word, out)
    assert result["torch"] is False, f"cvkit {' '.join(argv)} imported torch"
    assert result["torchvision"] is False, f"cvkit {' '.join(argv)} imported torchvision"


def test_probe_notices_torch():
    """The probe itself works: a command that needs torch is seen importing it."""
    result, out = probe("inspect-grad", "--model", "net", "--json")
    assert result["code"] == 0
    assert json.loads(out)["model"]["name"] == "net"
    assert result["torch"] is True


def test_python_m_cvkit_version():
    proc = run_cvkit("--version", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"cvkit {__version__}"
    assert proc.stderr == ""


def test_python_m_cvkit_without_arguments_shows_help():
    proc = run_cvkit(timeout=120)
    assert "Usage" in proc.stdout + proc.stderr
    assert "inspect-grad" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_command_is_usage_error():
    proc = run_cvkit("no-such-command", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "cvkit: error: cvkit: no such command 'no-such-command'; see 'cvkit --help'\n"
    assert "Traceback" not in proc.stderr


# Runs ``main()`` as the console script does, with two markers: an atexit handler, and an object
# held by this module's globals whose ``__del__`` runs only when the interpreter tears itself down
# (it clears the modules' globals at the very end of a normal exit; ``os._exit`` skips that).
TEARDOWN_PROBE = """
import atexit, os, sys

ATEXIT, TEARDOWN = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(ATEXIT, "w").write("yes"))


class Teardown:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.write = os.write  # kept: module globals may already be gone when __del__ runs

    def __del__(self):
        self.write(self.fd, b"torn down")


keep = Teardown(TEARDOWN)
sys.argv = ["cvkit"] + sys.argv[3:]
from cvkit.cli import main
main()
"""


def run_with_markers(tmp_path, *argv: str) -> tuple[subprocess.CompletedProcess, str, str]:
    """-> (the process, what the atexit marker holds, what the teardown marker holds)."""
    at_exit, teardown = tmp_path / "atexit-ran", tmp_path / "torn-down"
    for marker in (at_exit, teardown):
        marker.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", TEARDOWN_PROBE, str(at_exit), str(teardown), *argv],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    read = lambda path: path.read_text() if path.exists() else "<missing>"  # noqa: E731
    return proc, read(at_exit), read(teardown)


def test_a_command_that_imported_torch_exits_without_interpreter_teardown(tmp_path):
    """cvkit run as the program ends with os._exit after a torch command: the interpreter's
    teardown is skipped, yet atexit handlers still run, output is complete, and the exit status is
    the command's."""
    # the probe sees a normal teardown: --version imports no torch and exits the ordinary way
    proc, at_exit, teardown = run_with_markers(tmp_path, "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"cvkit {__version__}", proc.stderr
    assert (at_exit, teardown) == ("yes", "torn down")

    proc, at_exit, teardown = run_with_markers(tmp_path, "device", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["versions"]["torch"]  # the whole document arrived
    assert at_exit == "yes"
    assert teardown == "", "the interpreter tore itself down after a torch command: no fast exit"

    # an error after torch was imported keeps its exit status and its one line through the fast exit
    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    proc, at_exit, teardown = run_with_markers(tmp_path, "predict", str(tmp_path / "one.png"),
                                               "--checkpoint", str(tmp_path / "none.pt"))
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.count("cvkit: error:") == 1 and "none.pt" in "".join(proc.stderr.split()), proc.stderr
    assert (at_exit, teardown) == ("yes", "")
    bad = run_cvkit("predict", str(tmp_path / "one.png"), "--checkpoint", str(tmp_path / "none.pt"),
                    timeout=120)  # the same through `python -m cvkit`
    assert bad.returncode == 4 and bad.stderr.count("cvkit: error:") == 1, bad.stderr
