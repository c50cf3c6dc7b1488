# The words a newcomer guesses. Each target sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUF    := node_modules/.bin/buf

.PHONY: setup run test lint proto bench clean

setup: $(STAMP) $(BUF)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(BUF): package.json package-lock.json
	npm ci --silent --no-audit --no-fund
	touch $(BUF)

run: $(STAMP)
	$(BIN)/dspy-registry serve $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	mkdir -p build/typing/dspy_registry
	ln -sfn ../../../server build/typing/dspy_registry/server
	ln -sfn ../../../client build/typing/dspy_registry/client
	ln -sfn ../../../client/v1 build/typing/dspy_registry/v1
	$(BIN)/mypy -p dspy_registry.server -p dspy_registry.client -p tests -p bench
	$(BIN)/mypy protos/generate.py
	$(BUF) lint

proto: $(STAMP)
	$(BIN)/python protos/generate.py

bench: setup
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) node_modules build *.egg-info .pytest_cache .mypy_cache .ruff_cache
