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
    import cvkit.train

    where, _, nth = os.environ.get("CHILD_PAUSE", "").partition(":")
    count = {"saves": 0}
    real_save, real_replace = cvkit.train.save_checkpoint, os.replace
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

    cvkit.train.save_checkpoint = save_checkpoint
    torch.save = torch_save
    cvkit.checkpoint.os.replace = replace  # the os module itself: only .pt targets pause

    name = os.environ.get("CHILD_SIGNAL_IN_EVAL")
    if name:
        real_run_phase = cvkit.train.run_phase

        def run_phase(*args, **kwargs):
            if kwargs.get("optimizer") is None:
                signal.raise_signal(getattr(signal, name))
            return real_run_phase(*args, **kwargs)

        cvkit.train.run_phase = run_phase


if __name__ == "__main__":
    install_hooks()
    from cvkit.cli import main

    main(sys.argv[1:])
