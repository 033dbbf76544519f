"""`cvkit serve`: a checkpoint, run directory or ``.onnx`` file behind HTTP, on uvicorn.

:func:`serve` loads the model (:class:`cvkit.serve.model.ServedModel`), binds the socket itself (so
``--port 0`` picks a free port and the line it prints names it), builds the app
(:func:`cvkit.serve.app.create_app`) and runs uvicorn until SIGINT or SIGTERM: uvicorn then stops
accepting, lets the requests in flight finish, and the app's lifespan stops the batcher.
"""

from __future__ import annotations

import errno
import socket
import sys
import warnings

from cvkit import ui
from cvkit.errors import UsageError

INSTALL = 'pip install "cvkit[serve]"'


def check_installed() -> None:
    """A one-line error naming the extra if FastAPI, uvicorn or python-multipart is missing."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (FastAPI reads uploads with it)
        import uvicorn  # noqa: F401
    except ImportError as exc:
        missing = {"python_multipart": "python-multipart"}.get(exc.name, exc.name)
        raise UsageError(f"cvkit serve needs FastAPI, uvicorn and python-multipart ({missing} is missing): "
                         f"{INSTALL}") from None


def serve(checkpoint=None, *, host: str = "127.0.0.1", port: int = 8000, top_k: int = 5, max_batch: int = 32,
          max_wait_ms: float = 5.0, max_upload_mb: float = 20, device: str = "auto", precision: str = "auto",
          plugins=None) -> dict:
    """Serve until stopped; returns what was answered: ``{"url", "requests", "batches", "largest_batch"}``."""
    check_installed()
    _check_options(port, max_batch, max_wait_ms, max_upload_mb)
    import uvicorn
    from PIL import Image

    from cvkit.interrupts import Interrupted
    from cvkit.serve.app import create_app
    from cvkit.serve.model import ServedModel

    sock = bind(host, port)  # first: a port in use is said before the model is loaded
    try:
        model = ServedModel(checkpoint, device=device, precision=precision, top_k=top_k, plugins=plugins)
    except BaseException:
        sock.close()
        raise
    app = create_app(model, max_batch=max_batch, max_wait_ms=max_wait_ms, max_upload_mb=max_upload_mb)
    # ServedModel refuses images over Pillow's pixel limit itself; Pillow's warning would only repeat it
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    bound = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound}/"
    p = model.predictor
    ui.out.print(f"Serving {p.name} ({len(p.classes)} classes) from {p.path} on {url} with {p.device} {p.precision}: "
                 "open it in a browser, or POST images to /predict. Ctrl-C stops.", markup=False, highlight=False)
    sys.stdout.flush()  # a program waiting for the address reads it now
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", lifespan="on", timeout_graceful_shutdown=30))
    stopped_by = None
    try:
        server.run(sockets=[sock])
    except Interrupted as exc:  # uvicorn re-raises the signal it stopped on, once everything is answered
        stopped_by = exc
    stats = app.app.state.batcher.stats
    summary = {"url": url, "requests": stats.requests, "batches": stats.batches, "largest_batch": stats.largest}
    images, batches = (f"{n} {word}{'' if n == 1 else plural}" for n, word, plural in
                       ((stats.requests, "image", "s"), (stats.batches, "batch", "es")))
    ui.err.print(f"{stopped_by.message() if stopped_by else 'stopped'}: answered {images} in {batches} "
                 f"(largest {stats.largest})", markup=False, highlight=False)
    return summary


def _check_options(port: int, max_batch: int, max_wait_ms: float, max_upload_mb: float) -> None:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: must be 0 to 65535 (0: any free port)")
    if max_batch < 1:
        raise UsageError(f"--max-batch {max_batch}: must be at least 1 (1: no batching)")
    if max_wait_ms < 0:
        raise UsageError(f"--max-wait-ms {max_wait_ms}: must be 0 or more")
    if max_upload_mb <= 0:
        raise UsageError(f"--max-upload-mb {max_upload_mb}: must be more than 0")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; a one-line error if that address cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"--port {port}: {host}:{port} is already in use (--port 0 picks a free one)") from None
        raise UsageError(f"--host {host}: cannot listen there ({exc.strerror or exc})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
