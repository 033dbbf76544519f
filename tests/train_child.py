"""``python tests/train_child.py ARGS``: run ``cvkit ARGS`` in this process, with test hooks.

The reliability tests kill or signal this process at exact points; the hooks live here, not in
cvkit, and are chosen by environment variables:

``CHILD_EVENTS=FILE``
    append ``saved NAME`` after each checkpoint save, ``paused`` when a pause begins.
``CHILD_PAUSE=WHERE:N``
    on the N-th checkpoint save of this process, write ``paused`` and sleep until killed.
    WHERE is ``write`` (half of the file's bytes are in the temporary file) or ``replace``
    (the temporary file is complete and synced, the rename has not happened).
``CHILD_SIGNAL_IN_EVAL=SIGNAME``
    raise that signal in this process when ``cvkit eval`` starts its pass over the images.
``CHILD_WAIT_IN_VAL=N``
    at the start of the N-th validation pass of training, write ``validating RANK`` and wait (60 s
    at most) until this process receives SIGINT or SIGTERM; cvkit's own handler receives it too,
    then validation goes on.

Under ``cvkit train --nproc N`` the processes that torchrun starts run this file too, with the same
hooks (``torchrun_command`` is patched to start it instead of ``-m cvkit``).
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time


def _event(text: str) -> None:
    path = os.environ.get("CHILD_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


def _pause() -> None:
    _event("paused")
    time.sleep(600)


def install_hooks() -> None:
    import torch

    import cvkit.checkpoint
    import cvkit.engine.callbacks
    import cvkit.engine.loop
    import cvkit.engine.phase

    where, _, nth = os.environ.get("CHILD_PAUSE", "").partition(":")
    count = {"saves": 0}
    real_save, real_replace = cvkit.engine.callbacks.save_checkpoint, os.replace
    real_torch_save = torch.save

    def save_checkpoint(payload, path):
        count["saves"] += 1
        result = real_save(payload, path)
        _event(f"saved {os.path.basename(path)}")
        return result

    def pausing(now: str) -> bool:
        return where == now and count["saves"] == int(nth)

    def torch_save(obj, f, *args, **kwargs):
        if not pausing("write") or isinstance(f, (str, os.PathLike)):
            return real_torch_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_torch_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        _pause()

    def replace(src, dst, *args, **kwargs):
        if pausing("replace") and str(dst).endswith(".pt"):
            _pause()
        return real_replace(src, dst, *args, **kwargs)

    cvkit.engine.callbacks.save_checkpoint = save_checkpoint
    torch.save = torch_save
    cvkit.checkpoint.os.replace = replace  # the os module itself: only .pt targets pause

    _hook_val_wait(cvkit.engine.loop)
    _hook_launcher()

    name = os.environ.get("CHILD_SIGNAL_IN_EVAL")
    if name:
        real_run_phase = cvkit.engine.phase.run_phase

        def run_phase(*args, **kwargs):
            if kwargs.get("optimizer") is None:
                signal.raise_signal(getattr(signal, name))
            return real_run_phase(*args, **kwargs)

        cvkit.engine.loop.run_phase = run_phase  # training's passes
        cvkit.engine.phase.run_phase = run_phase  # cvkit eval's


def _wait_for_a_signal(seconds: float = 60) -> None:
    """Sleep until SIGINT or SIGTERM arrives, passing it on to the handler cvkit installed."""
    got = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def note(signum, frame):
        got.append(signum)
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)

    for s in previous:
        signal.signal(s, note)
    try:
        deadline = time.monotonic() + seconds
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _hook_val_wait(train_module) -> None:
    nth = int(os.environ.get("CHILD_WAIT_IN_VAL", "0"))
    if not nth:
        return
    real_run_phase, calls = train_module.run_phase, {"val": 0}

    def run_phase(*args, **kwargs):
        if kwargs.get("optimizer") is None:
            calls["val"] += 1
            if calls["val"] == nth:
                _event(f"validating {os.environ.get('RANK', '0')}")
                _wait_for_a_signal()
        return real_run_phase(*args, **kwargs)

    train_module.run_phase = run_phase


def _hook_launcher() -> None:
    import cvkit.distributed

    real = cvkit.distributed.torchrun_command

    def torchrun_command(nproc, cvkit_args):
        cmd = real(nproc, cvkit_args)
        at = cmd.index("-m", 2)  # the module torchrun runs: this file instead of cvkit
        return [*cmd[:at], os.path.abspath(__file__), *cmd[at + 2:]]

    cvkit.distributed.torchrun_command = torchrun_command


if __name__ == "__main__":
    install_hooks()
    from cvkit.cli import main

    main(sys.argv[1:])
