# `make test` and `make demo` create .venv on first use and install the pinned stack.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# Tests use both cores through pytest-xdist, one test file per worker at a time (a file's
# module fixtures, such as a training run, are then built once); PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2

$(BIN)/.installed: requirements.txt requirements-test.txt requirements-gpu-aot.txt \
		requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -r requirements-test.txt -r requirements-gpu-aot.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

.PHONY: install test test-fast demo lint-imports
install: $(BIN)/.installed

# The layer contract ([tool.importlinter] in pyproject.toml, the order of docs/design.md).
lint-imports: $(BIN)/.installed
	$(BIN)/lint-imports

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=15 tests

# The tests not marked slow: no training run, no TPU / GPU compile (a few minutes).
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=10 -m "not slow" tests

# Trains the tiny config on the embedded photographs, ESGF, experts, eval, upscale: runs/demo/.
demo: $(BIN)/.installed
	$(BIN)/linearsr demo --workdir runs/demo
