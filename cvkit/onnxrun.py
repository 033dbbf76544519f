"""An exported ``.onnx`` model run with onnxruntime: numpy and Pillow only, never torch.

``cvkit predict --checkpoint model.onnx`` uses :class:`OnnxModel`; the preprocessing is the one the
export's metadata describes (see :mod:`cvkit.describe`), done as torchvision does it on a PIL image
(the same Pillow resize, the same crop offsets), so the numbers match the model's own eval transform.
"""

from __future__ import annotations

from pathlib import Path

from cvkit.describe import from_strings
from cvkit.errors import CheckpointError, UsageError

INSTALL = 'pip install "cvkit[export]"'
RESAMPLING = {"nearest": 0, "nearest-exact": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


# Test-time augmentation (``--tta``): the views each image is also predicted as, in order. Each name
# has a numpy function here (NUMPY_VIEWS) and a torch one in cvkit.inference (TORCH_VIEWS); a new
# view is one line in each. The prediction is the mean of the views' softmax probabilities.
TTA_VIEWS = ("identity", "hflip")


def _identity(x):
    return x


def _hflip(x):
    """The batch mirrored left to right (N x C x H x W: its last axis)."""
    import numpy as np

    return np.ascontiguousarray(x[..., ::-1])


NUMPY_VIEWS = {"identity": _identity, "hflip": _hflip}


def check_views(views, known=NUMPY_VIEWS) -> tuple[str, ...]:
    """``views`` as a tuple of names, each one cvkit knows (UsageError naming those it knows)."""
    views = tuple(views)
    unknown = [v for v in views if v not in known]
    if unknown or not views:
        raise UsageError(f"--tta: {'unknown view ' + ', '.join(map(repr, unknown)) if unknown else 'no views'} "
                         f"(known: {', '.join(known)})")
    return views


def mean_log_softmax(logits):
    """log of the mean of the softmax probabilities of ``logits`` (one N x classes array per view),
    computed as a log-sum-exp, so a tiny probability is not rounded to log(0)."""
    import numpy as np

    z = np.stack(logits).astype(np.float64)
    top = z.max(axis=-1, keepdims=True)
    logp = z - top - np.log(np.exp(z - top).sum(axis=-1, keepdims=True))
    peak = logp.max(axis=0)
    return peak + np.log(np.exp(logp - peak).mean(axis=0))


def run_views(model, batch, views):
    """What ``model`` (an :class:`OnnxModel`) predicts for ``batch`` under test-time augmentation:
    log of the mean softmax over ``views`` (N x classes, float64)."""
    return mean_log_softmax([model.run(NUMPY_VIEWS[v](batch)) for v in check_views(views)])


def is_onnx(path) -> bool:
    return path is not None and str(path).lower().endswith(".onnx")


def _runtime():
    try:
        import onnxruntime
    except ImportError:
        raise CheckpointError(f"running an .onnx model needs onnxruntime: {INSTALL}") from None
    return onnxruntime


class OnnxModel:
    """An ``.onnx`` file cvkit exported: ``meta`` is its description, ``run`` its logits."""

    def __init__(self, path, *, option: str = "--checkpoint", threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{option} {path}: {'is a directory' if self.path.is_dir() else 'no such file'}")
        ort = _runtime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are not the user's business
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{option} {path}: not a readable ONNX model ({first[:200]})") from None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.meta = from_strings(props, where=f"{option} {path}")
        if self.meta["crop"] is None and self.meta["resize"] is None:
            raise CheckpointError(f"{option} {path}: its metadata gives no resize or crop, so cvkit cannot "
                                  f"prepare images for it")
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        self.classes = list(self.meta["classes"])

    def run(self, batch):
        """Logits (numpy, N x classes) of a float32 batch N x C x H x W."""
        return self.session.run(None, {self.input_name: batch})[0]

    def preprocess(self, picture):
        return preprocess(picture, self.meta)


def as_torch_module(model: OnnxModel):
    """``model`` behind a torch module (for ``cvkit eval``, whose data loader is torch's anyway):
    tensors in, tensors out, onnxruntime in between."""
    import torch

    class OnnxModule(torch.nn.Module):
        def forward(self, x):
            return torch.from_numpy(model.run(x.detach().float().cpu().numpy())).to(x.device)

    return OnnxModule().eval()


def preprocess(picture, meta: dict):
    """A PIL image as the model's input, C x H x W float32: channels, resize, centre crop, scale to
    0-1, normalise; the steps and numbers of ``meta``."""
    import numpy as np

    mode = "L" if meta["input_size"][0] == 1 else "RGB"
    if picture.mode != mode:
        picture = picture.convert(mode)
    resample = RESAMPLING.get(meta.get("interpolation") or "bilinear", 2)
    if meta["resize"] is not None:
        picture = _resize(picture, meta["resize"], resample)
    if meta["crop"] is not None:
        picture = _center_crop(picture, *meta["crop"])
    pixels = np.asarray(picture)
    pixels = (pixels[:, :, None] if pixels.ndim == 2 else pixels).transpose(2, 0, 1)
    mean = np.asarray(meta["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(meta["std"], dtype=np.float32)[:, None, None]
    x = np.empty(pixels.shape, dtype=np.float32)  # (pixel / 255 - mean) / std, in two passes
    np.multiply(pixels, 1.0 / (255.0 * std), out=x, casting="unsafe")
    x -= mean / std
    return x


def _resize(picture, size, resample):
    """torchvision's Resize on a PIL image: an int is the shorter side (the longer one truncated)."""
    w, h = picture.size
    if isinstance(size, int):
        short, long = (w, h) if w <= h else (h, w)
        if short == size:
            return picture
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = size
    return picture.resize((new_w, new_h), resample)


def _center_crop(picture, height: int, width: int):
    """torchvision's CenterCrop on a PIL image (padded with black where the image is smaller)."""
    from PIL import Image

    w, h = picture.size
    if w < width or h < height:
        padded = Image.new(picture.mode, (max(w, width), max(h, height)))
        padded.paste(picture, ((max(w, width) - w) // 2, (max(h, height) - h) // 2))
        picture, (w, h) = padded, padded.size
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return picture.crop((left, top, left + width, top + height))


def softmax_topk(logits, k: int):
    """(probabilities, indices), each N x k, best first."""
    import numpy as np

    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(probs, order, axis=1), order
