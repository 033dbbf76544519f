"""Load test of `cvkit serve` on loopback: with and without dynamic batching, side by side.

    python benchmarks/serve_load.py CHECKPOINT IMAGES... [--clients 16] [--requests 25] [--bad-every 5]
                                    [--precision fp32] [--json FILE]

Starts ``cvkit serve CHECKPOINT --port 0`` twice, batched (``--max-batch 32``) and unbatched
(``--max-batch 1``). Each run: every image once, alone, for the reference answer; then ``--clients``
threads, each with its own keep-alive connection, send ``--requests`` requests as fast as they are
answered (one image per request, multipart); every ``--bad-every``-th is a bad upload (not an
image, a truncated PNG, an empty file) that must be answered 4xx. A good answer must name the
reference's classes in the same order with probabilities within 1e-4 (fp32; a batch of other images
changes the last digits only). Prints requests/s, p50/p99 latency and the mean batch, and the
ratio. tests/test_serve_load.py runs it small; docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

BAD_UPLOADS = [("notes.txt", b"not an image at all\n"), ("empty.png", b"")]


@contextmanager
def running_server(checkpoint, *args: str, timeout: float = 90, launcher: tuple = ()):
    """``cvkit serve CHECKPOINT --port 0 ARGS`` in a subprocess; yields ``(process, url, log path)``
    once it listens, and stops it with SIGTERM after (the exit status is then in ``process.returncode``).
    ``launcher``: what runs cvkit, ``python -m cvkit`` unless given."""
    log = tempfile.NamedTemporaryFile("w+", prefix="cvkit-serve-", suffix=".log", delete=False)
    command = [*(launcher or (sys.executable, "-m", "cvkit")), "serve", str(checkpoint), "--port", "0", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        url = _wait_for_url(proc, timeout, log.name)
        yield proc, url, log.name
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        log.close()
        os.unlink(log.name)


def _wait_for_url(proc, timeout: float, log: str) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = proc.stdout.readline()
            if " on http://" in line:
                return line.split(" on ", 1)[1].split()[0]
            if not line and proc.poll() is not None:
                break
    proc.kill()
    raise RuntimeError(f"cvkit serve did not start: {Path(log).read_text()[-2000:]}")


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with each file in a field named ``file``, and its content type."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def connect(url: str, timeout: float = 60) -> http.client.HTTPConnection:
    """A keep-alive connection to the server at ``url``."""
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def post(conn: http.client.HTTPConnection, files: list[tuple[str, bytes]]) -> tuple[int, object]:
    body, kind = multipart(files)
    conn.request("POST", "/predict", body=body, headers={"Content-Type": kind})
    answer = conn.getresponse()
    return answer.status, json.loads(answer.read())


def get(url: str, path: str) -> tuple[int, object]:
    conn = connect(url, timeout=30)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def same_answer(got: list, want: list, tolerance: float = 1e-4) -> bool:
    return ([p["label"] for p in got] == [p["label"] for p in want]
            and all(abs(g["probability"] - w["probability"]) <= tolerance for g, w in zip(got, want)))


def load(url: str, good: list[tuple[str, bytes]], *, clients: int = 16, requests: int = 25, bad_every: int = 5) -> dict:
    """The load run against a server at ``url`` (see the module docstring); returns its figures."""
    conn = connect(url)
    reference = {}
    for name, data in good:
        status, body = post(conn, [(name, data)])
        if status != 200:
            raise RuntimeError(f"{name}: the reference request was answered {status}: {body}")
        reference[name] = body[0]["predictions"]
    conn.close()
    bad = BAD_UPLOADS + [("truncated.png", good[0][1][: len(good[0][1]) // 2])]
    _, before = get(url, "/health")
    records: list[tuple[float, bool, bool]] = []  # seconds, was bad, answered as it should be
    lock, start = threading.Lock(), threading.Barrier(clients + 1)

    def client(index: int) -> None:
        conn = connect(url)
        start.wait()
        for i in range(requests):
            n = index * requests + i
            is_bad = bad_every > 0 and n % bad_every == bad_every - 1
            name, data = bad[n % len(bad)] if is_bad else good[n % len(good)]
            began = time.perf_counter()
            try:
                status, body = post(conn, [(name, data)])
            except (OSError, http.client.HTTPException, ValueError):
                status, body = None, None
                conn.close()
                conn = connect(url)
            seconds = time.perf_counter() - began
            if is_bad:
                ok = status is not None and 400 <= status < 500 and body.get("file") == name
            else:
                ok = status == 200 and body[0]["path"] == name and same_answer(body[0]["predictions"], reference[name])
            with lock:
                records.append((seconds, is_bad, ok))
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    alive, after = get(url, "/health")
    latencies = sorted(s for s, _, _ in records)
    images = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    return {"requests": len(records), "good": sum(not b for _, b, _ in records), "bad": sum(b for _, b, _ in records),
            "good_correct": sum(ok for _, b, ok in records if not b), "bad_refused": sum(ok for _, b, ok in records if b),
            "seconds": round(wall, 3), "requests_per_second": round(len(records) / wall, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
            "mean_batch": round(images / batches, 2) if batches else None, "largest_batch": after["largest_batch"],
            "alive_after": alive == 200 and after["status"] == "ok"}


def compare(checkpoint, images: list[Path], *, clients: int = 16, requests: int = 25, bad_every: int = 5,
            precision: str = "fp32", extra: tuple[str, ...] = ()) -> dict:
    """:func:`load` against a batched and an unbatched server, one after the other, on the CPU."""
    good = [(Path(p).name, Path(p).read_bytes()) for p in images]
    results = {}
    for label, batch in (("batched", "32"), ("unbatched", "1")):
        args = ("--max-batch", batch, "--device", "cpu", "--precision", precision, *extra)
        with running_server(checkpoint, *args) as (proc, url, _):
            results[label] = {"max_batch": int(batch), **load(url, good, clients=clients, requests=requests,
                                                                 bad_every=bad_every)}
    b, u = results["batched"], results["unbatched"]
    results["ratio"] = {"requests_per_second": round(b["requests_per_second"] / u["requests_per_second"], 2),
                        "p50": round(b["p50_ms"] / u["p50_ms"], 2), "p99": round(b["p99_ms"] / u["p99_ms"], 2)}
    results["setup"] = {"checkpoint": str(checkpoint), "images": len(good), "clients": clients,
                        "requests_per_client": requests, "bad_every": bad_every, "precision": precision,
                        "cpus": os.cpu_count()}
    return results


def table(results: dict) -> str:
    rows = [f"{'':<28}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}  answered right"]
    for label in ("batched", "unbatched"):
        r = results[label]
        rows.append(f"{label + ' (--max-batch ' + str(r['max_batch']) + ')':<28}{r['requests_per_second']:>8}"
                    f"{r['p50_ms']:>9}{r['p99_ms']:>9}{r['mean_batch'] or '-':>7}  {r['good_correct']}/{r['good']} good, "
                    f"{r['bad_refused']}/{r['bad']} bad refused")
    ratio = results["ratio"]
    rows.append(f"{'ratio batched / unbatched':<28}{ratio['requests_per_second']:>8}{ratio['p50']:>9}{ratio['p99']:>9}")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--bad-every", type=int, default=5)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    results = compare(args.checkpoint, args.images, clients=args.clients, requests=args.requests,
                      bad_every=args.bad_every, precision=args.precision)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    right = all(results[k]["good_correct"] == results[k]["good"] and results[k]["bad_refused"] == results[k]["bad"]
                and results[k]["alive_after"] for k in ("batched", "unbatched"))
    return 0 if right else 1


if __name__ == "__main__":
    sys.exit(main())
