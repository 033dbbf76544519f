"""`cvkit serve`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cvkit.cli.options import DEVICE_HELP, PRECISION_HELP


def serve_cmd(
    checkpoint: Annotated[Optional[str], typer.Argument(
        metavar="CHECKPOINT", show_default="best.pt of the newest run in ./runs/",
        help="Checkpoint file, run directory, or an ONNX file from cvkit export (served without torch).")] = None,
    host: Annotated[str, typer.Option(
        metavar="ADDRESS", help="Address to listen on; 0.0.0.0 opens the server to other machines.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port to listen on; 0 picks a free one.")] = 8000,
    top_k: Annotated[int, typer.Option(min=1, metavar="K", help="Classes answered per image.")] = 5,
    max_batch: Annotated[int, typer.Option(
        min=1, metavar="N", help="Most images the model runs at once; requests arriving together are batched "
                                 "(1: no batching).")] = 32,
    max_wait_ms: Annotated[float, typer.Option(
        min=0, metavar="MS", help="Longest a request waits for others to join its batch.")] = 5.0,
    max_upload_mb: Annotated[float, typer.Option(
        min=0.001, metavar="MB", help="Largest request body; a larger upload is refused (413) before it is read.")] = 20,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
    precision: Annotated[str, typer.Option(metavar="PRECISION", help=PRECISION_HELP)] = "auto",
):
    """Serve a trained model over HTTP: a web page at /, POST /predict, GET /model, GET /health."""
    from cvkit.commands.serve import serve

    serve(checkpoint, host=host, port=port, top_k=top_k, max_batch=max_batch, max_wait_ms=max_wait_ms,
          max_upload_mb=max_upload_mb, device=device, precision=precision)


def register(app: typer.Typer) -> None:
    app.command("serve", rich_help_panel="Train and use")(serve_cmd)
