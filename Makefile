# Two entry points for a fresh machine: `make demo` (the main job on built-in demo data) and
# `make test` (the test suite). Each creates .venv and installs cvkit with what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

demo: install
	$(BIN)/cvkit device
	$(BIN)/cvkit inspect-grad --model net --step

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info
