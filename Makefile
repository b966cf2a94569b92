# fleetgen: the two commands are `make demo` and `make test`; everything else is set up
# by them from a fresh clone (virtualenv, Python dependencies, Mosquitto via apt-get).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: all demo test lint bench models system-deps venv clean

all: test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# System packages the tests need. Installed only when missing, and only as root
# (a developer without root gets a clear message instead).
system-deps:
	@bash scripts/system-deps.sh

demo: $(STAMP)
	$(BIN)/fleetgen demo $(ARGS)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy agent controller firmware

bench: $(STAMP)
	@for b in tests/bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Rebuild the shipped models from their recipes (needs PyTorch, CPU wheel; minutes).
models: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[recipes]'
	$(BIN)/python -m models.build

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
