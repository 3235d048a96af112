# Two commands matter: `make demo` and `make test`. Each sets up .venv on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-dev
BSTAMP  := $(VENV)/.installed-bench

.PHONY: demo test check lint types pytest fuzz bench redis-server chromium clean proto node-example

# Every extra: the tests and the examples use the gRPC and REST adapters.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,all]'
	touch $@

$(BSTAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,all,bench]'
	touch $@

# redis-server is a Debian package: installed when missing and we may (root), for the benchmarks.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q redis-server; \
	  else echo "redis-server missing: run 'sudo apt-get install redis-server'"; exit 1; fi; }

# chromium is a Debian package too: tests/test_dashboard.py drives it with Playwright (which
# cannot download its own browsers here). Installed when missing and we may (root); else the
# test skips and says so (under CI it fails instead: there it must run).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	  else echo "chromium missing: tests/test_dashboard.py will skip ('sudo apt-get install chromium')"; fi; }

demo: $(STAMP)
	$(BIN)/python examples/demo.py
	$(BIN)/python examples/ledger.py

lint: $(STAMP)
	$(BIN)/python -m ruff check asyncipc tests examples benchmarks
	$(BIN)/python -m ruff format --check asyncipc tests examples benchmarks

types: $(STAMP)
	$(BIN)/python -m mypy --strict asyncipc

check: lint types

pytest: $(STAMP) node-example chromium
	$(BIN)/python -m pytest

# The npm packages of examples/node (tests/test_grpc_node.py runs it), where node exists.
node-example:
	@if command -v node >/dev/null 2>&1; then \
	  test -d examples/node/node_modules/@grpc/grpc-js || \
	    (cd examples/node && npm ci --no-audit --no-fund); \
	else echo "node not found: tests/test_grpc_node.py will skip the Node.js example"; fi

test: check pytest

# A longer run of the decoder and handshake fuzzing than `make test`'s (tests/test_fuzz.py):
# FUZZ_EXAMPLES per property, no per-test time-out. About 8 minutes at 3000 on 2 vCPUs.
FUZZ_EXAMPLES ?= 3000
fuzz: $(STAMP)
	ASYNCIPC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q --timeout=0 \
	  --hypothesis-show-statistics tests/test_fuzz.py

bench: $(BSTAMP) redis-server
	$(BIN)/python -m benchmarks.run

# The gRPC stubs under asyncipc/adapters/grpc/proto/, and the copy of bus.proto the package
# ships there, are committed; regenerate them after editing protos/asyncipc/v1/bus.proto
# (tests/test_grpc_proto.py fails until you do).
proto: $(STAMP)
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
