#!/usr/bin/env bash
# The GPU check on a lent GPU machine, from the repository root (the device tool's `run`):
#
#   bash benchmarks/gpu_check.sh              # extra arguments go to gpu_check.py, e.g. --no-bench
#
# That machine's python3 already holds torch, torchvision, typer, rich, pluggy, pyyaml, pillow,
# matplotlib and pytest, and nothing can be downloaded there: this checkout is installed into it
# without dependencies or an index, then benchmarks/gpu_check.py runs. The report (gpu-check.json)
# and the log land in $OUT when the device tool sets it, else in runs/.
set -uo pipefail
PY=${PYTHON:-python3}
DEST=${OUT:-runs}
mkdir -p "$DEST"
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
"$PY" -c 'import importlib.metadata as m; print("versions:", *(f"{p} {m.version(p)}" for p in ("torch", "torchvision", "typer", "rich", "pluggy")))'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu_check.py --out "$DEST/gpu-check.json" --work-dir /tmp/cvkit-gpu-check "$@" 2>&1 \
    | tee "$DEST/gpu-check.log"
