"""The cvkit command line: thin Typer wrappers over plain functions in ``cvkit.commands``.

``main`` here is the console script's entry point; ``app.make_app`` builds the Typer app from one
module per command or group (``train``, ``eval``, ``predict``, ``preview``, ``inspect_grad``,
``device``, ``listing``, ``data``), whose shared options are in ``options``.

Nothing here imports torch: commands import it when they run, so ``cvkit --help`` and the listing
commands stay fast.
"""

from __future__ import annotations

import os
import sys
import traceback

from cvkit import ui, usage
from cvkit.cli.app import make_app
from cvkit.cli.options import (  # importable from cvkit.cli, as before the split
    D, DEVICE_HELP, PRECISION_HELP, WORKERS_HELP, CheckpointOpt, JsonOpt, OptOpt, _given,
)
from cvkit.cli.process import _LAUNCH_ARGV, _world_size
from cvkit.errors import CvkitError, message_of
from cvkit.interrupts import Interrupted, TrainingStopped, exit_on_signals
from cvkit.plugins import check_strict, get_plugins, strict

# what cvkit.cli offered as one module, kept: the entry point, the app, and the internals tests use
__all__ = ["main", "make_app", "_main", "_exit_now", "_verbose", "_world_size", "_LAUNCH_ARGV", "_given",
           "D", "DEVICE_HELP", "PRECISION_HELP", "WORKERS_HELP", "CheckpointOpt", "JsonOpt", "OptOpt"]


def _verbose(argv: list[str]) -> bool:
    if os.environ.get("CVKIT_VERBOSE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    return "--verbose" in argv or (argv[:1] == ["-v"])


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``cvkit`` console script: known errors become one line and an exit code.

    Run as the program (``argv`` None) after a command that imported torch, the process ends with
    ``os._exit`` once the atexit handlers have run and the output is flushed: the interpreter's
    own teardown of torch and torchvision takes about a second on 2 cores and does nothing a
    finished command needs (measured in docs/performance.md)."""
    as_program = argv is None
    try:
        _main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    if as_program and "torch" in sys.modules:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code) -> None:
    import atexit

    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # what the interpreter would still do: multiprocessing, tempfile, ...
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    os._exit(code)


def _main(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _LAUNCH_ARGV[:] = argv  # what `train --nproc N` passes on to torchrun
    verbose = _verbose(argv)
    # --verbose is global: accept it after the command name too (typer knows it only before)
    argv = [a for a in argv if a != "--verbose"]
    try:
        with exit_on_signals():  # Ctrl-C and SIGTERM: one line and exit 130 / 143, in every command
            plugins = get_plugins()
            app = make_app(plugins)
            if strict():
                check_strict(plugins)
            for problem in plugins.problems():
                ui.warn(problem)
            code = usage.invoke(app, argv)
        if code:
            sys.exit(code)
    except CvkitError as exc:
        if verbose:
            traceback.print_exc()
        rank = os.environ.get("RANK", "")
        if _world_size() <= 1:
            ui.error(message_of(exc))
        elif rank in ("", "0") or not isinstance(exc, TrainingStopped):  # rank 0 says why the job stopped
            ui.error(f"[rank {rank}] {message_of(exc)}")
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        ui.error(exc.message())
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # raised before the handlers were in place
        ui.error("interrupted (Ctrl-C)")
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`cvkit ... | head -1`): end quietly, as cat does
        usage.silence_stdout()
        sys.exit(usage.BROKEN_PIPE_EXIT)
