"""`cvkit inspect-grad`: the chapter's loss and backprop lesson, on any registered model.

Build the model, feed it a batch, compute a loss, then show the autograd graph behind the loss
(``loss.grad_fn`` and its ``next_functions``), every parameter's gradient after ``zero_grad()`` and
after ``backward()``, and, with ``step``, how far one optimizer step moves each parameter.
"""

from __future__ import annotations

import math

from cvkit.build import build_loss, build_model, build_optimizer, build_transform, model_spec
from cvkit.device import resolve_device
from cvkit.errors import UsageError
from cvkit.plugins import Plugins, get_plugins

SHOW_VALUES_UP_TO = 10  # gradients of parameters this small are shown in full, like the chapter's conv1.bias


def inspect_grad(*, model: str = "net", weights: str | None = None, num_classes: int = 10,
                 batch_size: int = 1, image: str | None = None, transforms: str | None = None,
                 loss: str = "mse", depth: int = 6, step: bool = False, optimizer: str = "sgd",
                 lr: float = 0.01, device: str = "auto", seed: int = 0, options: dict | None = None,
                 plugins: Plugins | None = None) -> dict:
    """Run the lesson and return everything it shows as plain data (JSON-ready)."""
    import torch

    plugins = plugins or get_plugins()
    options = options or {}
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    if num_classes < 1:
        raise UsageError(f"--num-classes {num_classes}: must be at least 1")
    spec = model_spec(model, plugins)
    dev = resolve_device(device)
    torch.manual_seed(seed)

    # Check the cheap inputs before building a possibly large model.
    if image is not None:
        from cvkit.images import load_image

        picture = load_image(image)
        transform = build_transform(spec, transforms, train=False, options=options.get("transform"),
                                    plugins=plugins)
        x = transform(picture).unsqueeze(0)  # one image is a batch of one: add the batch dimension
        x = x.repeat(batch_size, 1, 1, 1)
        source = str(image)
    else:
        x = torch.randn(batch_size, *spec.input_size)
        source = "random"
    loss_fn = build_loss(loss, options=options.get("loss"), plugins=plugins)

    net = build_model(model, num_classes=num_classes, weights=weights, options=options.get("model"),
                      plugins=plugins)
    net.to(dev)
    net.train()
    x = x.to(dev)
    target = torch.randint(0, num_classes, (batch_size,), device=dev)
    named = list(net.named_parameters())

    net.zero_grad(set_to_none=True)
    before = {name: _grad_stats(p.grad) for name, p in named}

    output = net(x)
    if output.ndim != 2 or output.shape[1] != num_classes:
        raise UsageError(f"--model {model}: output has shape {list(output.shape)}, expected "
                         f"[{batch_size}, {num_classes}] (logits per class)")
    loss_value = loss_fn(output, target)
    graph = _graph(loss_value.grad_fn, {id(p): n for n, p in named}, depth)
    loss_value.backward()
    after = {name: _grad_stats(p.grad) for name, p in named}

    parameters = [{
        "name": name, "shape": list(p.shape), "count": p.numel(), "trainable": p.requires_grad,
        "grad_before_backward": before[name], "grad_after_backward": after[name],
    } for name, p in named]

    moved = None
    if step:
        trainable = [p for _, p in named if p.requires_grad]
        if not trainable:
            raise UsageError(f"--step: model {model!r} has no trainable parameters")
        opt = build_optimizer(optimizer, trainable, lr=lr, options=options.get("optimizer"),
                              plugins=plugins)
        old = {name: p.detach().clone() for name, p in named}
        opt.step()
        moved = []
        for name, p in named:
            delta = (p.detach() - old[name]).float()
            moved.append({"name": name, "trainable": p.requires_grad,
                          "change_norm": float(delta.norm()), "max_abs_change": float(delta.abs().max())
                          if delta.numel() else 0.0})

    receiving = [n for n in parameters if n["grad_after_backward"] is not None]
    return {
        "model": {
            "name": spec.name, "plugin": spec.plugin, "input_size": list(spec.input_size),
            "num_classes": num_classes, "weights": weights, "repr": repr(net),
            "parameters": sum(p["count"] for p in parameters),
            "trainable_parameters": sum(p["count"] for p in parameters if p["trainable"]),
        },
        "device": str(dev),
        "input": {"source": source, "shape": list(x.shape)},
        "output": {"shape": list(output.shape)},
        "loss": {"name": loss, "value": float(loss_value.detach()), "grad_fn": type(loss_value.grad_fn).__name__
                 if loss_value.grad_fn is not None else None, "target": target.tolist()},
        "graph": graph,
        "parameters": parameters,
        "gradients": {
            "received": [p["name"] for p in receiving],
            "none": [p["name"] for p in parameters if p["grad_after_backward"] is None],
            "frozen": [p["name"] for p in parameters if not p["trainable"]],
        },
        "step": None if moved is None else {"optimizer": optimizer, "lr": lr, "parameters": moved},
    }


def _grad_stats(grad) -> dict | None:
    if grad is None:
        return None
    g = grad.detach().float()
    finite = g[g.isfinite()]
    stats = {
        "norm": float(finite.norm()) if finite.numel() else math.nan,
        "mean": float(finite.mean()) if finite.numel() else math.nan,
        "max_abs": float(finite.abs().max()) if finite.numel() else math.nan,
        "nonfinite": int(g.numel() - finite.numel()),
    }
    if g.numel() <= SHOW_VALUES_UP_TO:
        stats["values"] = [float(v) for v in g.flatten()]
    return stats


def _graph(fn, names: dict, depth: int) -> dict | None:
    """The autograd graph under ``fn`` as nested dicts, ``depth`` levels deep."""
    if fn is None:
        return None
    node = {"name": type(fn).__name__}
    variable = getattr(fn, "variable", None)  # AccumulateGrad: the leaf tensor it fills
    if variable is not None:
        node["parameter"] = names.get(id(variable), "(input)")
        node["shape"] = list(variable.shape)
    children = [child for child, _ in getattr(fn, "next_functions", ()) if child is not None]
    if children and depth <= 1:
        node["truncated"] = len(children)
    elif children:
        node["next_functions"] = [_graph(child, names, depth - 1) for child in children]
    return node


def render_inspect_grad(report: dict) -> None:
    from rich import box
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text
    from rich.tree import Tree

    from cvkit import ui

    m = report["model"]
    out = ui.out
    out.print(Panel(Text(m["repr"]), title=f"model {m['name']} (plugin {m['plugin']})",
                    subtitle=f"{m['parameters']:,} parameters, {m['trainable_parameters']:,} trainable",
                    expand=False))
    loss = report["loss"]
    out.print(f"input {report['input']['shape']} ({report['input']['source']}) on {report['device']} "
              f"-> output {report['output']['shape']}; loss [bold]{loss['name']}[/] = "
              f"[bold]{loss['value']:.6g}[/] against random target classes {loss['target']}")

    tree = Tree(Text.from_markup(f"[bold]loss.grad_fn[/] = {loss['grad_fn']}", overflow="fold"))
    _add_nodes(tree, report["graph"])
    out.print(Panel(tree, title="autograd graph (next_functions)", expand=False))

    none_before = sum(p["grad_before_backward"] is None for p in report["parameters"])
    out.print(f"after zero_grad(): {none_before} of {len(report['parameters'])} parameters have .grad None")
    table = Table(title="gradients after backward()", title_justify="left", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False)
    params = report["parameters"]
    nonfinite = sum((p["grad_after_backward"] or {}).get("nonfinite", 0) for p in params)
    table.add_column("name", overflow="fold", min_width=min(22, max(len(p["name"]) for p in params)))
    table.add_column("shape", no_wrap=True, min_width=max(len("x".join(map(str, p["shape"]))) for p in params))
    columns = ("count", "train", "norm", "mean", "max|g|") + (("nan/inf",) if nonfinite else ())
    for col in columns:
        table.add_column(col, justify="left" if col == "train" else "right", no_wrap=True,
                         min_width=max(len(col), 6))
    for p in params:
        g = p["grad_after_backward"]
        cells = [p["name"], "x".join(map(str, p["shape"])), _short_count(p["count"]),
                 "yes" if p["trainable"] else "[yellow]frozen[/]"]
        if g is None:
            cells += ["None", "", ""]
        else:
            cells += [f"{g['norm']:.3g}", f"{g['mean']:.2g}", f"{g['max_abs']:.3g}"]
        if nonfinite:
            cells.append(f"[red]{g['nonfinite']}[/]" if g and g["nonfinite"] else "0")
        table.add_row(*cells)
    ui.print_fitted(table, drop=("mean", "count", "shape"))
    if nonfinite:
        out.print(f"[red bold]{nonfinite} gradient values are NaN or infinite[/]")
    else:
        out.print("every gradient value is finite")

    small = [p for p in report["parameters"] if p["grad_after_backward"]
             and "values" in p["grad_after_backward"]]
    for p in small[:2]:
        values = ", ".join(f"{v:.4f}" for v in p["grad_after_backward"]["values"])
        out.print(f"{p['name']}.grad before backward: None; after backward: [{values}]")

    grads = report["gradients"]
    if grads["frozen"]:
        out.print(f"[bold]Only {', '.join(grads['received']) or 'no parameters'} received gradients[/]; "
                  f"{len(grads['frozen'])} frozen parameter tensors (requires_grad=False) got none.")
    else:
        out.print(f"All {len(grads['received'])} parameter tensors received gradients.")

    if report["step"]:
        s = report["step"]
        table = Table(title=f"one {s['optimizer']} step (lr {s['lr']:g}): how far each parameter moved",
                      title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("name")
        table.add_column("change norm", justify="right")
        table.add_column("max |change|", justify="right")
        for p in s["parameters"]:
            table.add_row(p["name"], f"{p['change_norm']:.4g}", f"{p['max_abs_change']:.3g}",
                          style=None if p["trainable"] else "dim")
        ui.print_fitted(table)


def _short_count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1_000_000 else f"{n / 1e3:.0f}k" if n >= 10_000 else str(n)


def _add_nodes(tree, node) -> None:
    from rich.text import Text

    if node is None:
        return
    for child in node.get("next_functions", []):
        label = child["name"]
        if "parameter" in child:
            label += f" [cyan]{child['parameter']}[/] {'x'.join(map(str, child['shape']))}"
        if "truncated" in child:
            label += f" [dim](+{child['truncated']} more below: raise --depth)[/]"
        _add_nodes(tree.add(Text.from_markup(label, overflow="fold")), child)
