"""Choosing where and in what precision to run: ``auto`` means CUDA, then MPS, then the CPU."""

from __future__ import annotations

import contextlib
import os
import platform

from cvkit.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX, Arm BF16)."""
    flags = cpu_flags()
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_device(name: str = "auto"):
    """A torch.device for ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a usage error if absent."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r}: not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here (see `cvkit device`)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not _mps_available():
        raise UsageError(f"--device {name}: MPS is not available here (see `cvkit device`)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name!r}: unsupported device type (use auto, cpu, cuda, cuda:N or mps)")
    return device


def resolve_precision(precision: str, device) -> str:
    """``auto``: bf16 on CUDA GPUs that support it and on CPUs with native bf16, fp16 on older GPUs,
    fp32 elsewhere. An explicit choice the device cannot run is a usage error."""
    import torch

    precision = (precision or "auto").strip().lower()
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if precision == "auto":
            return "bf16" if bf16_ok else "fp16"
        if precision == "bf16" and not bf16_ok:
            raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16")
        return precision
    if device.type == "cpu":
        if precision == "auto":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        if precision == "fp16":
            raise UsageError("--precision fp16 is for CUDA GPUs; on the CPU use bf16 or fp32")
        return precision
    return "fp32" if precision == "auto" else precision


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def autocast(device, precision: str):
    """Mixed precision for the forward pass and the loss; nothing for fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
