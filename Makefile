# fleetgen: the two commands are `make demo` and `make test`; everything else is set up
# by them from a fresh clone (virtualenv, Python dependencies, Mosquitto via apt-get).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
ARGS   ?=
PYTEST_ARGS ?=
DIST   ?= dist

.PHONY: all demo test lint bench models system-deps venv dist clean
.PHONY: resilience fuzz

all: test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP) $(DEMO_STAMP)

# `make demo` needs only the controller and release extras (no test, lint or browser tools):
# half the set-up time of a fresh clone. The full dev install above covers it too.
$(DEMO_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[controller,release]'
	@touch $(DEMO_STAMP)

venv: $(STAMP)

# System packages the tests need. Installed only when missing, and only as root
# (a developer without root gets a clear message instead).
system-deps:
	@bash scripts/system-deps.sh

demo: $(DEMO_STAMP)
	$(BIN)/fleetgen demo $(ARGS)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy agent controller firmware models/quantize.py models/shared_tables.py

# The wheel and the sdist, shipped models and board profiles inside, in $(DIST)/. The wheel
# is built from the sdist (python -m build's default), so what the sdist lacks shows here.
dist: $(STAMP)
	@mkdir -p $(DIST) && rm -f $(DIST)/fleetgen-*.whl $(DIST)/fleetgen-*.tar.gz
	$(BIN)/python -m build --outdir $(DIST) . >$(DIST)/.build.log 2>&1 || { cat $(DIST)/.build.log; exit 1; }
	@rm -f $(DIST)/.build.log
	@ls -1 $(DIST)/fleetgen-*

# Every bench but peers.py and optimum_check.py, which build their own venvs with torch:
# make bench-peers / make bench-optimum.
bench: $(STAMP)
	@for b in tests/bench/*.py; do case "$$b" in tests/bench/peers.py|tests/bench/optimum_check.py) continue;; esac; \
		echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Real optimum-cli exports (Llama, Qwen2, GPT-2) through fleetgen against transformers (own .venv-optimum)
.PHONY: bench-optimum
bench-optimum: $(STAMP)
	$(BIN)/python tests/bench/optimum_check.py $(ARGS)

# fleetgen against onnxruntime-genai and llama.cpp on one checkpoint (its own .venv-bench; slow)
.PHONY: bench-peers
bench-peers: $(STAMP)
	$(BIN)/python tests/bench/peers.py $(ARGS)

# The resilience suite at full size (docs/resilience.md): faults injected into real brokers,
# agents and controllers; prints the report table and writes $(RESILIENCE_JSON). The processes'
# logs stay in build/resilience-tmp/ until the next run.
RESILIENCE_JSON ?= build/resilience.json
resilience: $(STAMP) system-deps
	FLEETGEN_RESILIENCE=1 FLEETGEN_RESILIENCE_REPORT=$(RESILIENCE_JSON) \
		$(BIN)/python -m pytest -q -p no:cacheprovider --basetemp=build/resilience-tmp tests/resilience $(PYTEST_ARGS)

# Coverage-guided fuzzing (atheris) of every parser of outside input, FUZZ_S seconds each;
# a crash leaves its input in build/fuzz/ and fails the target.
FUZZ_S ?= 30
fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[fuzz]'
	$(BIN)/python -m tests.fuzz.run --seconds $(FUZZ_S) --out build/fuzz

# Rebuild the shipped models from their recipes (needs PyTorch, CPU wheel; minutes).
models: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[recipes]'
	$(BIN)/python -m models.build

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
