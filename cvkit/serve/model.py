"""The model side of `cvkit serve`: uploaded bytes in, ``cvkit predict --json``'s rows out.

It wraps the predictor ``cvkit predict`` uses (:func:`cvkit.commands.predict.load_predictor`), so a
served answer is predict's by construction, and an ``.onnx`` file is served without torch.
:meth:`ServedModel.decode` runs per upload (in a request's thread); :meth:`ServedModel.run_batch`
is the batcher's ``run_batch`` (in its one model thread).
"""

from __future__ import annotations


class ServedModel:
    """A checkpoint, run directory or ``.onnx`` file, loaded once for serving."""

    def __init__(self, checkpoint, *, device: str = "auto", precision: str = "auto", top_k: int = 5, plugins=None):
        from cvkit.commands.predict import load_predictor
        from cvkit.errors import UsageError

        if top_k < 1:
            raise UsageError(f"--top-k {top_k}: must be at least 1")
        self.predictor = load_predictor(checkpoint, device, precision, plugins)
        self.top_k = min(top_k, len(self.predictor.classes))

    def decode(self, name: str, data: bytes):
        """The model input for an uploaded file; :class:`cvkit.errors.DataError` naming ``name`` for
        anything that is not a readable image (empty, truncated, not an image, a decompression bomb:
        over Pillow's ``MAX_IMAGE_PIXELS``, refused from its header before it is decoded)."""
        from PIL import Image

        from cvkit.images import load_image

        picture = load_image(name, min_side=self.predictor.min_side, data=data, max_pixels=Image.MAX_IMAGE_PIXELS)
        return self.predictor.transform(picture)

    def run_batch(self, inputs: list) -> list[list[dict]]:
        """Each input's top-k classes, as ``predict --json`` gives them."""
        from cvkit.commands.predict import top_classes

        return top_classes(self.predictor, inputs, self.top_k)

    def describe(self) -> dict:
        """What ``GET /model`` says: model, classes, input size, checkpoint, device, precision."""
        p = self.predictor
        return {"model": p.name, "classes": list(p.classes), "input_size": list(p.input_size),
                "checkpoint": str(p.path), "device": str(p.device), "precision": p.precision, "top_k": self.top_k}
