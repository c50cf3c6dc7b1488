# The words a newcomer guesses. Each target sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUF    := node_modules/.bin/buf

.PHONY: setup run test lint proto bench bench-peers clean clients demo soak released-protos

setup: $(STAMP) $(BUF)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	touch $(STAMP)

$(BUF): package.json package-lock.json
	npm ci --silent --no-audit --no-fund
	touch $(BUF)

run: $(STAMP)
	$(BIN)/dspy-registry serve $(ARGS)

# The whole story on a throwaway store, in under a minute: see demo/__main__.py.
demo: $(STAMP)
	$(BIN)/python -m demo $(ARGS)

# Two worker processes (pytest-xdist), each given whole test files: most of a test's time is spent
# waiting on a server, a subprocess or PostgreSQL, so two keep the 2-core CI machine busy. A file's
# tests stay together and in order (module fixtures are made once). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	mkdir -p build/typing/dspy_registry
	ln -sfn ../../../server build/typing/dspy_registry/server
	ln -sfn ../../../client build/typing/dspy_registry/client
	ln -sfn ../../../client/v1 build/typing/dspy_registry/v1
	ln -sfn ../../../dspy_registry/cli.py build/typing/dspy_registry/cli.py
	$(BIN)/mypy -m dspy_registry.cli -p dspy_registry.server -p dspy_registry.client -p tests -p bench -p demo
	$(BIN)/mypy protos/generate.py
	$(BUF) lint
	$(BUF) breaking --against protos/released.binpb

# The contract clients already hold (protos/released.binpb, what `make lint` checks breaking changes
# against): rebuilt from the protos when a release is cut, never to make a breaking change pass.
released-protos: $(BUF)
	$(BUF) build --exclude-source-info -o protos/released.binpb

proto: $(STAMP)
	$(BIN)/python protos/generate.py

# Clients in other languages, for examples/. Node.js: nothing to generate, proto-loader reads protos/
# at run time; this checks that it parses them. Ruby: grpc_tools_ruby_protoc (Debian's ruby-grpc-tools)
# writes *_pb.rb and *_services_pb.rb into $(CLIENTS_OUT)/ruby; google/protobuf and google/rpc come from
# the ruby-google-protobuf and ruby-googleapis-common-protos-types packages. The comments come along
# (buf's descriptors keep source info); Debian's grpc 1.51 plugin aborts on a `$` in one, so the protos
# have none (the Ruby test runs this target and would fail).
CLIENTS_OUT ?= build/clients
RUBY_STUBS = $(CLIENTS_OUT)/ruby
PROTO_FILES = $(patsubst protos/%,%,$(wildcard protos/dspy_registry/v1/*.proto))

clients: $(BUF)
	node -e 'require("@grpc/proto-loader").loadSync(process.argv.slice(1), {includeDirs: ["protos"]})' $(PROTO_FILES)
	@echo "node: nothing to generate; proto-loader loads $(PROTO_FILES) from protos/"
	@command -v grpc_tools_ruby_protoc >/dev/null || \
	  { echo "grpc_tools_ruby_protoc not found: apt-get install ruby-grpc ruby-grpc-tools" >&2; exit 1; }
	rm -rf $(RUBY_STUBS) && mkdir -p $(RUBY_STUBS)
	$(BUF) build -o $(CLIENTS_OUT)/descriptors.binpb
	grpc_tools_ruby_protoc --descriptor_set_in=$(CLIENTS_OUT)/descriptors.binpb \
	  --ruby_out=$(RUBY_STUBS) --grpc_out=$(RUBY_STUBS) $(PROTO_FILES)
	@echo "ruby: $$(cd $(RUBY_STUBS) && ls dspy_registry/v1/*.rb | tr '\n' ' ')"

# The reliability suite at length (tests/reliability/conftest.py): SOAK_MINUTES=15 by default.
SOAK_MINUTES ?= 15
soak: setup
	SOAK_MINUTES=$(SOAK_MINUTES) $(BIN)/python -m pytest tests/reliability -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench $(ARGS)

# Watch fan-out against etcd 3.4 (Debian's etcd-server) and the bare grpc.aio ceiling, and MLflow's model
# registry (from PyPI, in build/bench-peers/mlflow-venv: bench/mlflow_peer.py), on loopback; rewrites
# docs/benchmarks.md, docs/benchmarks-fanout.png and the README's performance tables (see bench/peers.py).
# Never in `make test`.
bench-peers: setup
	$(BIN)/python -m bench.peers $(ARGS)

clean:
	rm -rf $(VENV) node_modules build *.egg-info .pytest_cache .mypy_cache .ruff_cache
