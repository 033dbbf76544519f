"""Where a model looked: Grad-CAM on its last feature map, or on a vision transformer's token grid.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of a layer's activations ``A`` by the mean
gradient of the class score over that channel, sums, and keeps the positive part:
``relu(sum_c mean(dy/dA_c) * A_c)``. Where the map is coarse (7x7 for a resnet at 224 pixels) the
picture upsamples it to the input.

The layer is found without knowing the model (:func:`find_layer`): one forward pass records every
module's output, in the order the modules finish. The last output laid out as a feature map (N, C,
H, W), or N, H, W, C as in Swin, whose grid matches the input's proportions, is the last
convolutional block; containers finish after their children, so the outermost module with that
output wins (``layer4``, ``features``). A model whose last stage works on tokens (N, T, D: ViT,
DeiT) is explained at the input of its last transformer block, its tokens laid out on their patch
grid (the class and other prefix tokens dropped): the last block is where the class token gathers
from the patches, so the patches' gradients there say which of them it used. A model plugin may
name the layer itself: ``register(..., cam_layer="blocks.-1.norm1")`` (a dotted path; negative
numbers index from the end).
"""

from __future__ import annotations

from dataclasses import dataclass

from cvkit.errors import UsageError

MAX_PREFIX_TOKENS = 16  # class, distillation and register tokens before a transformer's patch grid
ASPECT_TOLERANCE = 0.15  # a feature map's rows and columns shrink the input by about the same factor


class CannotExplain(UsageError):
    """The model has no layer Grad-CAM can use (one line, as every user error)."""


@dataclass(frozen=True)
class Layer:
    """The activations Grad-CAM uses: module ``name``'s output (or, ``use_input``, its input),
    laid out as ``layout``: ``nchw``, ``nhwc`` or ``tokens`` (``prefix`` tokens, then ``grid``)."""

    name: str
    layout: str
    grid: tuple[int, int]
    prefix: int = 0
    use_input: bool = False

    def describe(self) -> str:
        where = f"the input of {self.name}" if self.use_input else self.name
        what = "token grid" if self.layout == "tokens" else "feature map"
        return f"{where} ({self.grid[0]}x{self.grid[1]} {what})"

    def as_dict(self) -> dict:
        return {"name": self.name, "input": self.use_input, "layout": self.layout, "size": list(self.grid)}


def map_layout(shape, input_hw) -> str | None:
    """``nchw`` or ``nhwc`` where a 4-d activation of ``shape`` is a feature map of the input (more
    than one row and column, each shrinking the input by about the same factor), else None."""
    if shape is None or len(shape) != 4:
        return None
    height, width = input_hw
    for layout, (h, w) in (("nchw", shape[2:]), ("nhwc", shape[1:3])):
        if 1 < h <= height and 1 < w <= width and abs((height / h) / (width / w) - 1) <= ASPECT_TOLERANCE:
            return layout
    return None


def token_grid(tokens: int, input_hw) -> tuple[int, tuple[int, int]] | None:
    """``(prefix, (rows, columns))``: ``tokens`` as a few prefix tokens followed by a patch grid of
    the input's proportions, the fewest prefix tokens first; None if there is no such grid."""
    import math

    height, width = input_hw
    for prefix in range(min(MAX_PREFIX_TOKENS, tokens - 4) + 1):
        patches = tokens - prefix
        rows = max(1, round(math.sqrt(patches * height / width)))
        if patches % rows == 0 and abs(rows / (patches // rows) - height / width) <= ASPECT_TOLERANCE * height / width:
            return prefix, (rows, patches // rows)
    return None


def find_layer(model, x, cam_layer: str | None = None) -> Layer:
    """The layer Grad-CAM uses for ``model`` on a batch like ``x`` (one forward pass, no gradients):
    ``cam_layer`` when the model's plugin names one, else found as the module docstring says."""
    records = _record_outputs(model, x)
    input_hw = tuple(x.shape[-2:])
    if cam_layer:
        return _named_layer(model, cam_layer, records, input_hw)
    maps = [r for r in records if map_layout(r.output, input_hw)]
    blocks = _token_blocks(records, input_hw)
    last_map, last_block = (maps[-1] if maps else None), (blocks[-1] if blocks else None)
    if last_block is not None and (last_map is None or last_block.order > last_map.order):
        prefix, grid = token_grid(last_block.input[1], input_hw)
        return Layer(last_block.name, "tokens", grid, prefix, use_input=True)
    if last_map is not None:
        return _map_layer(last_map.name, last_map.output, map_layout(last_map.output, input_hw))
    raise CannotExplain("has no convolutional feature map or transformer token grid that Grad-CAM can "
                        "use; its plugin can name one with register(..., cam_layer=\"a.module.path\")")


@dataclass
class _Record:
    order: int
    name: str
    kind: type
    leaf: bool
    input: tuple | None
    output: tuple | None


def _record_outputs(model, x) -> list[_Record]:
    """Every named module's input and output shapes, in the order the modules finished."""
    import torch

    records, handles = [], []

    def recorder(name, module):
        def hook(_module, args, output):
            first = args[0] if args and torch.is_tensor(args[0]) else None
            records.append(_Record(len(records), name, type(module), not any(True for _ in module.children()),
                                   tuple(first.shape) if first is not None else None,
                                   tuple(output.shape) if torch.is_tensor(output) else None))
        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(recorder(name, module)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return records


def _token_blocks(records: list[_Record], input_hw) -> list[_Record]:
    """Transformer blocks: modules with children that map tokens (N, T, D) to tokens of the same
    shape, T a patch grid with a few prefix tokens, of a kind that repeats (a stack of them)."""
    blocks = [r for r in records if not r.leaf and r.input is not None and len(r.input) == 3
              and r.input == r.output and token_grid(r.input[1], input_hw)]
    counts: dict[type, int] = {}
    for r in blocks:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    return [r for r in blocks if counts[r.kind] > 1]


def resolve_module(model, path: str):
    """The submodule at a dotted ``path``; a number indexes a Sequential or ModuleList (``-1``: the
    last). Returns ``(module, its name in model.named_modules())`` or raises KeyError."""
    module = model
    for part in path.split("."):
        if part.lstrip("-").isdigit():
            try:
                module = module[int(part)]
            except (TypeError, IndexError):
                raise KeyError(path) from None
        else:
            module = module._modules.get(part) if hasattr(module, "_modules") else None
            if module is None:
                raise KeyError(path)
    names = {id(m): n for n, m in model.named_modules()}
    return module, names.get(id(module), path)


def _map_layer(name: str, shape, layout: str) -> Layer:
    """The layer of a feature map of ``shape`` in ``layout``: its rows and columns are the grid."""
    return Layer(name, layout, tuple(shape[2:] if layout == "nchw" else shape[1:3]))


def _named_layer(model, path: str, records: list[_Record], input_hw) -> Layer:
    try:
        _, name = resolve_module(model, path)
    except KeyError:
        raise CannotExplain(f"names cam_layer={path!r}, which is not one of its modules") from None
    shape = next((r.output for r in reversed(records) if r.name == name), None)
    layout = map_layout(shape, input_hw) if shape else None
    if layout:
        return _map_layer(name, shape, layout)
    found = token_grid(shape[1], input_hw) if shape and len(shape) == 3 else None
    if found:
        return Layer(name, "tokens", found[1], found[0])
    raise CannotExplain(f"names cam_layer={path!r}, whose output {list(shape) if shape else 'is not a tensor'} "
                        "is neither a feature map (N, C, H, W) nor tokens on a patch grid (N, T, D)")


def gradcam(model, x, layer: Layer, targets=None):
    """``(probabilities, targets, heatmaps)`` for a batch ``x``: softmax probabilities (N x classes),
    the class explained per image (``targets``, else the predicted one) and Grad-CAM heatmaps on
    the layer's grid (N x rows x columns, float32, each scaled to a maximum of 1 where not all zero).
    Gradients flow to the layer only: the model's parameters are left as they are."""
    import torch

    module, _ = resolve_module(model, layer.name)
    captured = {}
    if layer.use_input:
        handle = module.register_forward_pre_hook(lambda _m, args: captured.__setitem__("a", args[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _args, out: captured.__setitem__("a", out))
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True)).float()
            probabilities = torch.softmax(logits.detach(), dim=1)
            targets = probabilities.argmax(1) if targets is None else targets.to(logits.device)
            (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), captured["a"])
    finally:
        handle.remove()
    acts, grads = _as_maps(captured["a"].detach().float(), layer), _as_maps(grads.float(), layer)
    cams = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1))
    return probabilities, targets, scale_to_one(cams)


def _as_maps(t, layer: Layer):
    """Activations (or their gradients) as N x C x rows x columns."""
    if layer.layout == "nhwc":
        return t.permute(0, 3, 1, 2)
    if layer.layout == "tokens":
        rows, cols = layer.grid
        return t[:, layer.prefix:, :].reshape(t.shape[0], rows, cols, t.shape[-1]).permute(0, 3, 1, 2)
    return t


def scale_to_one(cams):
    """Each heatmap divided by its maximum (one that is zero everywhere stays zero)."""
    peak = cams.flatten(1).amax(dim=1).clamp_min(1e-12)
    return cams / peak[:, None, None]


def gradcam_views(model, x, layer: Layer, targets=None, views=None):
    """:func:`gradcam`, with test-time augmentation when ``views`` are given: the class is that of
    the views' mean probabilities, and the heatmap the mean of the views' (each mapped back onto
    the picture: a mirrored view's heatmap is mirrored back)."""
    import torch

    if not views:
        return gradcam(model, x, layer, targets)
    from cvkit.inference import TORCH_VIEWS

    with torch.no_grad():
        probabilities = torch.stack([torch.softmax(model(TORCH_VIEWS[v](x)).float(), dim=1) for v in views]).mean(0)
    targets = probabilities.argmax(1) if targets is None else targets
    cams = [gradcam(model, TORCH_VIEWS[v](x), layer, targets)[2] for v in views]
    cams = [TORCH_VIEWS[v](c[:, None])[:, 0] for v, c in zip(views, cams)]  # the views here are their own inverses
    return probabilities, targets, scale_to_one(torch.stack(cams).mean(0))


def upsample(cams, size):
    """Heatmaps (N x h x w) resized to the input's ``size`` (rows, columns), bilinear, in [0, 1]."""
    import torch.nn.functional as F

    return F.interpolate(cams[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)
