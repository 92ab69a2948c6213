# `make test` and `make demo` create .venv on first use and install the pinned stack.
# The pins were resolved and tested on Python 3.11: the venv is made with it, checked before
# anything is installed. PYTHON=/path/to/python3.11 names the interpreter.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# Tests use both cores through pytest-xdist, one test file per worker at a time (a file's
# module fixtures, such as a training run, are then built once); PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
# Opt-in: an index that serves PyTorch's CPU build (https://download.pytorch.org/whl/cpu), for
# the test-only reference. Its torch 2.13.0+cpu satisfies the pin torch==2.13.0 and ranks above
# PyPI's 2.13.0, which on Linux x86_64 is the CUDA build with several GB of CUDA libraries.
TORCH_INDEX ?=

NEED_PYTHON := install Python 3.11 with venv (Debian / Ubuntu: sudo apt-get install python3.11 \
python3.11-venv) or name one: make PYTHON=/path/to/python3.11

$(BIN)/.installed: requirements.txt requirements-test.txt requirements-gpu-aot.txt \
		requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || { \
	  v=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	  w=$${v:+is Python $$v, not 3.11}; \
	  test "$$v" = 3.11 || { \
	    echo "make: PYTHON=$(PYTHON) $${w:-does not run}: $(NEED_PYTHON)" >&2; exit 2; }; \
	  $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	    echo "make: $(PYTHON) has no venv module: $(NEED_PYTHON)" >&2; exit 2; }; \
	}
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_INDEX:%=--extra-index-url %) \
	  -r requirements.txt -r requirements-test.txt -r requirements-gpu-aot.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

.PHONY: install test test-fast demo lint lint-imports
install: $(BIN)/.installed

# The layer contract ([tool.importlinter] in pyproject.toml, the order of docs/design.md).
lint-imports: $(BIN)/.installed
	$(BIN)/lint-imports

# ruff's rules and yapf's style (pyproject.toml); `$(BIN)/yapf -ir $(PY_SOURCES)` formats.
PY_SOURCES := linearsr_jax tests bench configs
lint: lint-imports
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/yapf --diff --recursive --parallel $(PY_SOURCES)

PYTEST := $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile
test: $(BIN)/.installed
	$(PYTEST) --durations=15 tests

# The tests not marked slow: no training run, no TPU / GPU compile (a few minutes).
test-fast: $(BIN)/.installed
	$(PYTEST) --durations=10 -m "not slow" tests

# Trains the tiny config on the embedded photographs, ESGF, experts, eval, upscale: runs/demo/.
demo: $(BIN)/.installed
	$(BIN)/linearsr demo --workdir runs/demo
