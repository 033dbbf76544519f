"""`cvkit serve` (issue 19) against a real server: `cvkit serve --port 0` in a subprocess on loopback,
spoken to over HTTP. Each endpoint, each bad input, the answers of `cvkit predict --json`, the
upload limit before the body is read, SIGTERM, the ONNX path without torch."""

from __future__ import annotations

import importlib.util
import io
import json
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import REPO, no_torch_python, run_cvkit, train_run
from cvkit_plugins.demo import make_shapes

spec = importlib.util.spec_from_file_location("serve_load", REPO / "benchmarks" / "serve_load.py")
serve_load = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve_load)

CLASSES = ("circle", "square", "star")
FP32 = ("--device", "cpu", "--precision", "fp32")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-api") / "shapes"
    make_shapes(root, train_per_class=3, val_per_class=2, size=32, seed=5, classes=CLASSES)
    run = train_run(root.parent / "run", str(root), "--model", "net", "--epochs", "1", "--batch-size", "3",
                    "--workers", "0")
    return root, run


@pytest.fixture(scope="module")
def server(trained):
    """One server for the read-only tests: top-2, a 1 MB upload limit."""
    _, run = trained
    with serve_load.running_server(run, "--top-k", "2", "--max-upload-mb", "1", *FP32) as (proc, url, log):
        yield url
        assert proc.poll() is None, Path(log).read_text()[-2000:]  # still up after every test


def send(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = serve_load.connect(url, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        data = answer.read()
        kind = answer.getheader("content-type", "")
        return answer.status, json.loads(data) if kind.startswith("application/json") else data.decode(), answer
    finally:
        conn.close()


def post_files(url: str, files: list[tuple[str, bytes]]):
    body, kind = serve_load.multipart(files)
    return send(url, "POST", "/predict", body, {"Content-Type": kind})


def val_images(root: Path) -> list[Path]:
    return sorted((root / "val").rglob("*.png"))


def test_the_server_listens_on_loopback_unless_told_otherwise(server):
    assert server.startswith("http://127.0.0.1:")


def test_model_and_health_describe_the_model(server, trained):
    status, model, _ = send(server, "GET", "/model")
    assert status == 200
    assert model["model"] == "net" and model["classes"] == list(CLASSES) and model["input_size"] == [1, 32, 32]
    assert model["checkpoint"].endswith("best.pt") and model["device"] == "cpu" and model["precision"] == "fp32"
    assert model["top_k"] == 2 and model["max_batch"] == 32 and model["max_upload_mb"] == 1
    status, health, _ = send(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert {"requests", "batches", "largest_batch", "batch_sizes"} <= set(health)


def test_the_page_is_served_with_nothing_from_elsewhere(server):
    status, page, answer = send(server, "GET", "/")
    assert status == 200 and answer.getheader("content-type").startswith("text/html")
    assert 'type="file"' in page and "fetch(\"/predict\"" in page
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    policy = answer.getheader("content-security-policy")
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "'sha256-" in policy
    for path in ("/docs", "/redoc", "/openapi.json"):  # no docs UI, no schema
        assert send(server, "GET", path)[0] == 404


def test_predictions_equal_cvkit_predict_json(server, trained, cli):
    root, run = trained
    files = val_images(root)
    want = json.loads(cli("predict", *map(str, files), "-c", str(run), "--top-k", "2", "--json", *FP32).out)
    status, got, _ = post_files(server, [(f.name, f.read_bytes()) for f in files])
    assert status == 200 and [r["path"] for r in got] == [f.name for f in files]
    for answer, row in zip(got, want, strict=True):
        assert set(answer) == {"path", "predictions"} and len(answer["predictions"]) == 2
        assert [p["label"] for p in answer["predictions"]] == [p["label"] for p in row["predictions"]]
        assert [p["probability"] for p in answer["predictions"]] == pytest.approx(
            [p["probability"] for p in row["predictions"]], abs=1e-5)
    # the raw image as the body, named by ?name=
    status, raw, _ = send(server, "POST", "/predict?name=mine.png", files[0].read_bytes(), {"Content-Type": "image/png"})
    assert status == 200 and raw[0]["path"] == "mine.png"
    assert [p["label"] for p in raw[0]["predictions"]] == [p["label"] for p in want[0]["predictions"]]


def bomb(side: int) -> bytes:
    """A PNG of side x side one-bit pixels: a few kilobytes that would decode to side² pixels."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, format="PNG")
    return out.getvalue()


def truncated(root: Path) -> bytes:
    data = val_images(root)[0].read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("name,make,words", [
    ("notes.txt", lambda root: b"hello, not an image", "not a readable image"),
    ("half.png", truncated, "not a readable image"),
    ("empty.png", lambda root: b"", "empty file"),
    ("bomb.png", lambda root: bomb(10_000), "decompression bomb"),  # 100 Mpx: over Pillow's limit (89 Mpx)
    ("bigger-bomb.png", lambda root: bomb(14_000), "decompression bomb"),  # over twice it: Pillow's own error
])
def test_a_bad_upload_is_a_400_naming_the_file(server, trained, name, make, words):
    root, _ = trained
    good = val_images(root)[0]
    status, body, _ = post_files(server, [(good.name, good.read_bytes()), (name, make(root))])
    assert status == 400, body
    assert body["file"] == name and body["error"].startswith(f"{name}: ") and words in body["error"]
    assert [e["file"] for e in body["errors"]] == [name]  # the good one is not blamed
    assert send(server, "GET", "/health")[0] == 200


def test_wrong_requests_are_4xx_with_a_json_error(server):
    status, body, _ = send(server, "POST", "/predict", b"hello", {"Content-Type": "text/plain"})
    assert status == 415 and "Content-Type text/plain" in body["error"] and "'file'" in body["error"]
    status, body, _ = send(server, "POST", "/predict?name=nothing.png", b"", {"Content-Type": "image/png"})
    assert status == 400 and body["error"] == "nothing.png: not a readable image (empty file)"
    body_bytes, kind = serve_load.multipart([("a.png", b"x")])
    status, body, _ = send(server, "POST", "/predict", body_bytes.replace(b'name="file"', b'name="image"'),
                           {"Content-Type": kind})
    assert status == 400 and "field named 'file'" in body["error"]
    status, body, _ = send(server, "POST", "/predict", b"--x\r\nnonsense", {"Content-Type": "multipart/form-data"})
    assert 400 <= status < 500 and body["error"]


def test_an_upload_over_the_limit_is_refused_before_it_is_read(server):
    """The request announces 5 MB and sends none of it: the 413 comes back at once."""
    parts = urlsplit(server)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 5242880\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "over the limit of 1 MB" in answer and "--max-upload-mb" in answer


def test_a_streamed_upload_is_cut_off_at_the_limit(server):
    """No Content-Length (chunked): refused once 1 MB has come in, not after all 3 MB."""
    conn = serve_load.connect(server, timeout=30)
    sent = []

    def chunks():
        for _ in range(48):  # 48 x 64 KiB = 3 MiB
            sent.append(1)
            yield b"\0" * 65536

    try:
        conn.request("POST", "/predict", body=chunks(), headers={"Content-Type": "image/png"}, encode_chunked=True)
        answer = conn.getresponse()
        status, body = answer.status, json.loads(answer.read())
    except (BrokenPipeError, ConnectionResetError):  # the server answered and closed while we still sent
        pytest.fail("the server closed the connection without a 413")
    finally:
        conn.close()
    assert status == 413 and "over the limit of 1 MB" in body["error"]


def test_a_model_crash_fails_only_its_own_request(trained):
    """A real uvicorn in this process, around a model that crashes on one upload: the batch it was in
    is answered for the others, the crashing request gets a 500 naming its file, the server stays up."""
    import uvicorn

    from cvkit.serve.app import create_app
    from cvkit.serve.model import ServedModel

    root, run = trained
    served = ServedModel(str(run), device="cpu", precision="fp32", top_k=2)

    class Fragile:
        def decode(self, name, data):
            return name, served.decode(name, data)

        def run_batch(self, items):
            if any(name.startswith("crash") for name, _ in items):
                raise RuntimeError("the model fell over")
            return served.run_batch([x for _, x in items])

        def describe(self):
            return served.describe()

    app = create_app(Fragile(), max_batch=8, max_wait_ms=300)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        image = val_images(root)[0].read_bytes()
        names = ["a.png", "crash.png", "b.png", "c.png"]
        answers = {}
        posts = [threading.Thread(target=lambda n=n: answers.__setitem__(n, post_files(url, [(n, image)])))
                 for n in names]
        for t in posts:
            t.start()
        for t in posts:
            t.join(30)
        status, body, _ = answers["crash.png"]
        assert status == 500 and body["file"] == "crash.png"
        assert body["error"] == "crash.png: the model failed on this image: RuntimeError: the model fell over"
        for name in ("a.png", "b.png", "c.png"):
            status, body, _ = answers[name]
            assert status == 200 and body[0]["path"] == name
        assert app.app.state.batcher.stats.largest > 1  # they did share a batch
        status, health, _ = send(url, "GET", "/health")
        assert status == 200 and health["largest_batch"] == max(map(int, health["batch_sizes"]))
        assert sum(int(size) * n for size, n in health["batch_sizes"].items()) == health["requests"]
    finally:
        server.should_exit = True
        thread.join(30)


def test_sigterm_finishes_the_request_in_flight_then_exits(trained):
    root, run = trained
    image = val_images(root)[0]
    with serve_load.running_server(run, "--max-wait-ms", "3000", *FP32) as (proc, url, log):
        answer, sent = {}, threading.Event()

        def ask():
            body, kind = serve_load.multipart([(image.name, image.read_bytes())])
            conn = serve_load.connect(url, timeout=30)
            conn.request("POST", "/predict", body=body, headers={"Content-Type": kind})
            sent.set()
            reply = conn.getresponse()
            answer["r"] = reply.status, json.loads(reply.read())
            conn.close()

        request = threading.Thread(target=ask)
        request.start()
        assert sent.wait(30)
        time.sleep(0.3)  # the request is in; it waits in the batcher (up to 3 s) for company
        proc.send_signal(signal.SIGTERM)
        request.join(30)
        assert proc.wait(30) == 0
        stderr = Path(log).read_text()
    status, body = answer["r"]
    assert status == 200 and body[0]["path"] == image.name
    assert "stopped by SIGTERM: answered 1 image in 1 batch (largest 1)" in stderr
    with pytest.raises(OSError):  # no longer listening
        send(url, "GET", "/health")


def test_a_port_in_use_is_one_line(trained):
    _, run = trained
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cvkit("serve", str(run), "--port", str(port), "--device", "cpu", timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [f"cvkit: error: --port {port}: 127.0.0.1:{port} is already in use "
                                                "(--port 0 picks a free one)"]


def test_without_the_extra_serve_says_how_to_install_it(monkeypatch):
    from cvkit.commands.serve import check_installed
    from cvkit.errors import UsageError

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    with pytest.raises(UsageError) as caught:
        check_installed()
    assert "uvicorn is missing" in str(caught.value) and 'pip install "cvkit[serve]"' in str(caught.value)




@pytest.mark.slow
def test_an_onnx_model_is_served_without_torch(trained, tmp_path, cli):
    pytest.importorskip("onnxruntime")
    root, run = trained
    exported = cli("export", str(run), "--format", "onnx", "--json")
    assert exported.code == 0, exported.err
    onnx_file = json.loads(exported.out)["out"]
    files = val_images(root)
    want = json.loads(cli("predict", *map(str, files), "-c", str(onnx_file), "--top-k", "3", "--json").out)
    with serve_load.running_server(onnx_file, "--top-k", "3", launcher=(*no_torch_python(tmp_path), "-m", "cvkit")) \
            as (proc, url, log):
        status, got, _ = post_files(url, [(f.name, f.read_bytes()) for f in files])
        status_model, model, _ = send(url, "GET", "/model")
    assert status == 200, got
    assert model["device"] == "cpu onnxruntime" and model["checkpoint"].endswith(".onnx")
    for answer, row in zip(got, want, strict=True):
        assert answer["path"] == Path(row["path"]).name
        assert [p["label"] for p in answer["predictions"]] == [p["label"] for p in row["predictions"]]
