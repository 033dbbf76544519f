"""The HTTP side of `cvkit serve`: an ASGI app around a :class:`~cvkit.serve.model.ServedModel`.

Routes: ``GET /`` (the page, ``page.html``: no external assets, a Content-Security-Policy that
allows none), ``POST /predict``, ``GET /model``, ``GET /health``; nothing else (no docs UI, no
OpenAPI schema). Each upload is decoded in a small thread pool (bounded, so a flood of large images
cannot take all the memory), then handed to the :class:`~cvkit.serve.batcher.DynamicBatcher`.
Errors are JSON ``{"error": message, "file": name}``: 400 for an upload that is not a readable image,
413 for one over the size limit (refused from its Content-Length before the body is read, or as soon
as a streamed body passes the limit), 415 for a content type that is neither multipart nor an image,
500 when the model fails on that request's images, 503 while the server stops.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources

# only cvkit serve imports this module, after checking that the serve extra is installed
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

RAW_TYPES = "an image (image/*) or application/octet-stream"


class UploadTooLarge(Exception):
    """The request body passed the upload limit while it was read."""


class Refused(Exception):
    """A request answered with an error: ``status`` and the JSON ``body``."""

    def __init__(self, status: int, message: str, file: str | None = None, **more):
        super().__init__(message)
        self.status, self.body = status, {"error": message, "file": file, **more}


def create_app(model, *, max_batch: int = 32, max_wait_ms: float = 5.0, max_upload_mb: float = 20,
               decode_workers: int = 4):
    """The ASGI app serving ``model`` (a ServedModel, or anything with its ``decode``, ``run_batch``
    and ``describe``); its lifespan starts and stops the batcher."""
    from cvkit.serve.batcher import DynamicBatcher

    limit = int(max_upload_mb * 2**20)
    batcher = DynamicBatcher(model.run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms)
    decoder = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="cvkit-decode")
    settings = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_upload_mb": max_upload_mb}

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        try:
            yield
        finally:  # uvicorn gets here after the requests in flight are answered
            await batcher.stop()
            decoder.shutdown(wait=True)

    app = FastAPI(title="cvkit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    page, policy = load_page()

    @app.get("/")
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff"})

    @app.get("/model")
    async def describe():
        return {**model.describe(), **settings}

    @app.get("/health")
    async def health():
        stats = batcher.stats
        return {"status": "ok", "requests": stats.requests, "batches": stats.batches, "largest_batch": stats.largest,
                "batch_sizes": {str(size): n for size, n in sorted(stats.sizes.items())}}

    @app.post("/predict")
    async def predict(request: Request):
        try:
            uploads = await read_uploads(request)
            inputs = await _decode_all(model, decoder, uploads)
            answers = await _answer_all(batcher, [name for name, _ in uploads], inputs)
        except Refused as exc:
            return JSONResponse(exc.body, status_code=exc.status)
        return [{"path": name, "predictions": rows} for (name, _), rows in zip(uploads, answers)]

    return UploadLimit(app, limit)


async def read_uploads(request: Request) -> list[tuple[str, bytes]]:
    """``(file name, bytes)`` of each upload: the multipart fields named ``file``, or the body itself
    (named by the ``name`` query parameter, else ``body``)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind == "multipart/form-data":
            return await _form_files(request)
        if kind.startswith("image/") or kind == "application/octet-stream":
            return [(request.query_params.get("name") or "body", await request.body())]
    except UploadTooLarge as exc:
        raise Refused(413, str(exc)) from None
    shown = kind or "none"
    raise Refused(415, f"Content-Type {shown}: send multipart/form-data with each image in a field named 'file', "
                       f"or the image itself as the body, as {RAW_TYPES}")


async def _form_files(request) -> list[tuple[str, bytes]]:
    from starlette.exceptions import HTTPException

    try:
        form = await request.form()
    except HTTPException as exc:  # starlette's word for a malformed multipart body
        raise Refused(400, f"malformed multipart upload: {exc.detail}") from None
    fields = form.getlist("file")
    if not fields:
        raise Refused(400, "no file in the upload: send each image as a form field named 'file'")
    files = []
    for field in fields:
        if isinstance(field, str):
            raise Refused(400, "the form field 'file' holds text, not a file: upload the image as a file")
        files.append((field.filename or "file", await field.read()))
    return files


async def _decode_all(model, decoder, uploads: list) -> list:
    from cvkit.errors import DataError

    loop = asyncio.get_running_loop()
    decoded = await asyncio.gather(*(loop.run_in_executor(decoder, model.decode, name, data) for name, data in uploads),
                                   return_exceptions=True)
    failed = [(name, exc) for (name, _), exc in zip(uploads, decoded) if isinstance(exc, BaseException)]
    if failed:
        errors = [{"file": name, "error": str(exc) if isinstance(exc, DataError) else f"{name}: {_described(exc)}"}
                  for name, exc in failed]
        status = 400 if all(isinstance(exc, DataError) for _, exc in failed) else 500
        raise Refused(status, errors[0]["error"], failed[0][0], errors=errors)
    return decoded


async def _answer_all(batcher, names: list[str], inputs: list) -> list:
    from cvkit.serve.batcher import Stopping

    answers = await asyncio.gather(*(batcher.submit(x) for x in inputs), return_exceptions=True)
    for name, answer in zip(names, answers):
        if isinstance(answer, Stopping):
            raise Refused(503, "the server is stopping: try again once it is back", name)
        if isinstance(answer, BaseException):
            raise Refused(500, f"{name}: the model failed on this image: {_described(answer)}", name)
    return answers


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


class UploadLimit:
    """ASGI middleware: a request whose Content-Length is over ``limit`` bytes is answered 413 before
    any of its body is read; a body without one (chunked) raises :class:`UploadTooLarge` to the reader
    as soon as it passes the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await send_json(send, 400, {"error": f"Content-Length {declared.decode(errors='replace')!r} "
                                                            "is not a number", "file": None})
            if int(declared) > self.limit:
                return await send_json(send, 413, {"error": self.message(int(declared)), "file": None})
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise UploadTooLarge(self.message(received, more=True))
            return message

        await self.app(scope, counted, send)

    def message(self, size: int, more: bool = False) -> str:
        return (f"upload of {'more than ' if more else ''}{size / 2**20:.1f} MB is over the limit of "
                f"{self.limit / 2**20:g} MB (cvkit serve --max-upload-mb)")


async def send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


def load_page() -> tuple[str, str]:
    """The page (``page.html`` beside this module) and a Content-Security-Policy that lets it run
    its own inline script and style (by their hashes) and load nothing from anywhere else."""
    page = resources.files("cvkit.serve").joinpath("page.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    policy = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
              "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page, policy
