# Two entry points for a fresh machine: `make demo` (the main job on built-in demo data) and
# `make test` (the test suite). Each creates .venv and installs cvkit with what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast bench gpu-check gpu-check-dry clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,serve]"
	touch $@

# The main job, offline: draw the built-in shapes data, train the chapter's Net on it, evaluate the
# best checkpoint (with pictures), predict a few images with it and show where it looked (Grad-CAM).
DEMO_DATA ?= data/shapes
demo: install
	$(BIN)/cvkit device
	$(BIN)/cvkit data demo $(DEMO_DATA)
	$(BIN)/cvkit train $(DEMO_DATA) --model net --epochs 6 --lr 0.01 --out runs/demo-$$(date +%Y%m%d-%H%M%S)
	$(BIN)/cvkit eval --out runs/demo-eval
	$(BIN)/cvkit predict '$(DEMO_DATA)/val/*/*_000[01].png' --top-k 2 --grid runs/demo-predictions.png
	$(BIN)/cvkit explain '$(DEMO_DATA)/val/*/*_000[01].png' --out runs/demo-explain.png

# The suite in up to 4 processes (pytest-xdist; one per core up to that), each test file whole in one
# of them (its module fixtures made once): 567 s on a fresh clone instead of 825-889 s, on 2 cores.
PYTEST_PARALLEL ?= -n auto --maxprocesses 4 --dist loadfile
test: install
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-fast: install
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

# The benchmark of docs/performance.md: cvkit against the plain chapter loop, on data it draws into
# .bench-data/ (about 12 minutes on 2 quiet CPU cores, a few more the first time). `make bench BENCH_ARGS=--quick`
# checks the harness in about 3 minutes; raw numbers go to runs/bench-results.json.
BENCH_ARGS ?=
bench: install
	$(BIN)/python benchmarks/run.py --out runs/bench-results.json $(BENCH_ARGS)

# The GPU check (docs/performance.md, "GPU"): every CUDA path on a real GPU; gpu-check-dry rehearses it on the CPU.
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py --out runs/gpu-check.json

gpu-check-dry: install
	$(BIN)/python benchmarks/gpu_check.py --dry-run --out runs/gpu-check-dry.json

clean:
	rm -rf $(VENV) build *.egg-info
