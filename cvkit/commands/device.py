"""`cvkit device`: versions, hardware, and what `auto` picks."""

from __future__ import annotations

import platform

from cvkit import __version__
from cvkit.device import cpu_count, cpu_has_native_bf16, cpu_model, resolve_device, resolve_precision


def device_report() -> dict:
    import torch
    import torchvision

    gpus = []
    cuda = torch.cuda.is_available()
    if cuda:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({
                "index": i, "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "compute_capability": f"{props.major}.{props.minor}",
                "bf16": bool(props.major >= 8),
            })
    mps_backend = getattr(torch.backends, "mps", None)
    auto_device = resolve_device("auto")
    return {
        "versions": {
            "cvkit": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        },
        "cpu": {
            "model": cpu_model(), "architecture": platform.machine(), "cores": cpu_count(),
            "torch_threads": torch.get_num_threads(), "native_bf16": cpu_has_native_bf16(),
            "torch_capability": _cpu_capability(torch),
        },
        "cuda": {
            "available": cuda, "version": torch.version.cuda, "device_count": len(gpus), "devices": gpus,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
        },
        "mps": {"available": bool(mps_backend and mps_backend.is_available())},
        "auto": {"device": str(auto_device), "precision": resolve_precision("auto", auto_device)},
    }


def _cpu_capability(torch) -> str | None:
    getter = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return getter() if getter else None


def render_device_report(report: dict) -> None:
    from rich.table import Table

    from cvkit import ui

    yes = lambda b: "[green]yes[/]" if b else "no"  # noqa: E731
    table = Table(title="cvkit device", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    v, cpu, cuda = report["versions"], report["cpu"], report["cuda"]
    table.add_row("versions", f"cvkit {v['cvkit']} · torch {v['torch']} · torchvision {v['torchvision']} "
                              f"· python {v['python']}")
    table.add_row("CPU", f"{cpu['model']} ({cpu['architecture']})")
    table.add_row("cores / torch threads", f"{cpu['cores']} / {cpu['torch_threads']}")
    table.add_row("CPU native bf16", yes(cpu["native_bf16"]) + (f" (torch uses {cpu['torch_capability']})"
                                                                if cpu["torch_capability"] else ""))
    table.add_row("CUDA", (f"{yes(True)}, CUDA {cuda['version']}, cuDNN {cuda['cudnn']}" if cuda["available"]
                           else f"no (torch built with CUDA {cuda['version']})" if cuda["version"]
                           else "no (CPU-only torch)"))
    for g in cuda["devices"]:
        table.add_row(f"  GPU {g['index']}", f"{g['name']}, {g['memory_gib']} GiB, "
                                             f"compute capability {g['compute_capability']}")
    table.add_row("MPS", yes(report["mps"]["available"]))
    table.add_row("auto picks", f"[bold]{report['auto']['device']}[/] with [bold]{report['auto']['precision']}[/]")
    ui.out.print(table)
