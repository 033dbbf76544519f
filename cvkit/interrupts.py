"""Ctrl-C and SIGTERM: exit 130 / 143 with one line, and a graceful stop inside training.

``cvkit.cli.main`` wraps every command in :func:`exit_on_signals`: SIGINT and SIGTERM raise
:class:`Interrupted`, which ``main`` prints as one line and turns into ``128 + signal number``.
``fit`` wraps its loop in :class:`GracefulStop`: the first signal only asks the loop to stop after
the current optimizer step (so it can save ``last.pt``); a second one raises at once.

Handlers are installed from the main thread only (Python allows no other) and the previous ones
are restored on exit. DataLoader workers set their own at start (:func:`reset_worker_signals`);
until then a forked worker's inherited handlers ignore SIGINT and die of SIGTERM, so a worker never
raises or prints a traceback for them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from cvkit.errors import CvkitError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_IGNORED: set[int] = set()  # signals this process ignores from now on (see ignore_from_now)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Interrupted(BaseException):
    """SIGINT or SIGTERM raised by cvkit's handlers.

    A BaseException like KeyboardInterrupt, so ``except Exception`` does not swallow it, but not a
    KeyboardInterrupt: click turns that into "Aborted!" and exit code 1.
    """

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = signum
        self.exit_code = 128 + signum

    def message(self) -> str:
        return "interrupted (Ctrl-C)" if self.signum == signal.SIGINT else f"stopped by {signal_name(self.signum)}"


class TrainingStopped(CvkitError):
    """Training stopped by a signal after saving what is needed to resume; exit 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def ignore_from_now(signum: int) -> None:
    """Ignore ``signum`` for the rest of this process, also once cvkit's handlers are taken down: for
    a process already on its way out, whose exit status a late signal must not replace."""
    _IGNORED.add(signum)
    if _in_main_thread():
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def _handlers(handler):
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN if s in _IGNORED else handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_IGN if s in _IGNORED else h if h is not None else signal.SIG_DFL)


def _foreign_process(signum: int, owner: int) -> bool:
    """True in a forked child (a DataLoader worker): ignore SIGINT, die of SIGTERM as by default."""
    if os.getpid() == owner:
        return False
    if signum == signal.SIGTERM:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return True


def exit_on_signals():
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread while the block runs."""
    owner = os.getpid()

    def handler(signum, frame):
        if not _foreign_process(signum, owner):
            raise Interrupted(signum)

    return _handlers(handler)


class GracefulStop:
    """``with GracefulStop() as stop:`` ... ``if stop.requested:`` save and stop.

    The first SIGINT/SIGTERM sets ``requested`` (the signal number); a second raises
    :class:`Interrupted` at once, wherever the loop is.

    A signal sent to the whole process group (systemd and Slurm send SIGTERM to every process of
    a job) also ends the DataLoader workers, and torch's SIGCHLD handler then raises in the main
    process, in the middle of whatever step it is in. After a stop request that error is held
    back (``workers_lost`` is set) so the step can finish and be saved, except while the loop
    waits for a batch (``fetching``, set by ``cvkit.engine.phase.run_phase``): there it must be raised,
    or the wait would last until the DataLoader timeout, and no step is half done. ``cleanup``
    (shutting the workers down) runs on the way out while those errors are still held back: on a
    busy machine a worker may die of the signal only then.
    """

    def __init__(self, cleanup=None):
        self._cleanup = cleanup
        self.requested: int | None = None
        self.fetching = False
        self.workers_lost = False
        self._owner = os.getpid()
        self._context = None
        self._sigchld = None

    def _handler(self, signum, frame):
        if _foreign_process(signum, self._owner):
            return
        if self.requested is not None:
            raise Interrupted(signum)
        self.requested = signum
        self._hold_back_worker_deaths()
        if sys.stderr is not None and sys.stderr.isatty():
            # os.write, not print: the handler may run in the middle of another write to stderr
            os.write(2, f"\ncvkit: {signal_name(signum)}: stopping after this step to save "
                        f"last.pt (press Ctrl-C again to abort at once)\n".encode())

    def _hold_back_worker_deaths(self) -> None:
        sigchld = getattr(signal, "SIGCHLD", None)
        previous = signal.getsignal(sigchld) if sigchld is not None else None
        if not callable(previous):  # no DataLoader workers were started: nothing to hold back
            return

        def on_child(signum, frame):
            try:
                previous(signum, frame)
            except RuntimeError:
                if self.fetching:
                    raise
                self.workers_lost = True

        self._sigchld = (sigchld, previous)
        signal.signal(sigchld, on_child)

    def __enter__(self):
        self._context = _handlers(self._handler)
        self._context.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            if self._cleanup is not None:
                self._cleanup()
        finally:
            if self._sigchld is not None:
                signal.signal(*self._sigchld)
            suppressed = self._context.__exit__(*exc)
        return suppressed


def reset_worker_signals(worker_id: int) -> None:
    """``worker_init_fn`` of cvkit's DataLoaders: a worker ignores Ctrl-C (a terminal sends it to
    the whole process group; the main process finishes its step and shuts the workers down), and
    dies of SIGTERM as by default, which torch relies on to end a stuck worker, even one stuck in
    C code where no Python handler would run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
