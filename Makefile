# Two commands matter: `make demo` and `make test`. Each sets up .venv on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-dev
BSTAMP  := $(VENV)/.installed-bench

.PHONY: demo test check lint types pytest pytest-accel accel pure fuzz bench bench-compiled \
        redis-server chromium clean proto node-example

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

# The pure-Python run: ASYNCIPC_EXPECT_COMPILED=0 makes tests/test_build.py fail if compiled
# modules left in place by `make accel` would be tested instead (`make pure` removes them).
# PYTEST_WORKERS pytest-xdist processes share the tests (tests/README.md, "In parallel"):
# the suite waits on processes, servers and time-outs more than it computes, so two workers
# on two cores take about 40% less time than one. PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 2
PYTEST_N = -n $(PYTEST_WORKERS)

pytest: $(STAMP) node-example chromium
	ASYNCIPC_EXPECT_COMPILED=0 $(BIN)/python -m pytest $(PYTEST_N)

# The accelerated build (docs/architecture.md, "The accelerated build"): mypyc compiles the hot
# modules of setup.py's COMPILED list next to their sources, so this checkout's .venv (an
# editable install) runs them compiled; `make pure` goes back to the pure-Python sources.
accel: $(STAMP)
	ASYNCIPC_COMPILE=1 $(BIN)/python setup.py -q build_ext --inplace

pure:
	find asyncipc -name '*.so' -delete
	rm -rf build/lib.* build/temp.*

# The focused part of the tests (the wire, the codec, routing, bad input, the decoder's
# fuzzing; the Bus, its subscriptions and typed bodies, the broker's sessions, flow control
# and permissions, the reconnect's refused handshakes, a broker joining a file:// directory
# once) against the compiled build, in a copy of the package under $(ACCEL): not in place,
# so that the pure run keeps testing the .py files. benchmarks/_accel.py builds the copy,
# again only when the package's sources changed (`benchmarks.run --build compiled` runs
# the same copy), and the tests are copied beside it. `make test` runs this first, so the
# pure run's test of `--build both` finds the copy built. cwd and PYTHONPATH put the copy
# first, for the tests and for the brokers they start in processes of their own; the guard
# test (tests/test_build.py, ASYNCIPC_EXPECT_COMPILED=1) fails if the copy is not compiled
# after all. The conformance
# suite runs over the transports that use the compiled codec each in its own way (stream,
# datagram, in-process, pipe): the others add time, not coverage.
ACCEL       := build/accel
ACCEL_TESTS := tests/test_build.py tests/test_protocol.py tests/test_protocol_edges.py \
               tests/test_wire_raw.py tests/test_subjects.py tests/test_router.py \
               tests/test_bad_input.py tests/test_fuzz.py tests/test_client_usage.py \
               tests/test_subscription_batch.py tests/test_typed.py tests/test_flow_control.py \
               tests/test_cancellation.py tests/test_broker_lifecycle.py \
               tests/test_keepalive_limits.py tests/test_permissions.py \
               tests/test_reconnect.py::test_a_reader_that_never_reads_does_not_hold_the_bus \
               tests/test_file_bus.py::test_a_broker_joins_a_directory_once_at_a_time \
               tests/test_ring.py tests/test_shm.py tests/test_mmap.py tests/test_monitor.py \
               tests/test_stream_writes.py tests/test_inline_handlers.py tests/test_services.py \
               --deselect tests/test_shm.py::test_the_shm_pipeline_example_runs
ACCEL_RUN    = cd $(ACCEL) && ASYNCIPC_EXPECT_COMPILED=1 PYTHONPATH=$(abspath $(ACCEL)) \
               $(abspath $(BIN))/python -m pytest -p no:cacheprovider

pytest-accel: $(STAMP)
	$(BIN)/python -m benchmarks._accel
	rm -rf $(ACCEL)/tests $(ACCEL)/docs && cp -R tests docs $(ACCEL)/
	$(ACCEL_RUN) $(PYTEST_N) $(ACCEL_TESTS)
	$(ACCEL_RUN) $(PYTEST_N) tests/test_conformance.py -k "unix or udp or memory or pipe or shm"

# The npm packages of examples/node (tests/test_grpc_node.py runs it), where node exists.
node-example:
	@if command -v node >/dev/null 2>&1; then \
	  test -d examples/node/node_modules/@grpc/grpc-js || \
	    (cd examples/node && npm ci --no-audit --no-fund); \
	else echo "node not found: tests/test_grpc_node.py will skip the Node.js example"; fi

test: check pytest-accel pytest

# A longer run of the decoder and handshake fuzzing than `make test`'s (tests/test_fuzz.py):
# FUZZ_EXAMPLES per property, no per-test time-out. About 8 minutes at 3000 on 2 vCPUs.
FUZZ_EXAMPLES ?= 3000
fuzz: $(STAMP)
	ASYNCIPC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q --timeout=0 \
	  --hypothesis-show-statistics tests/test_fuzz.py

bench: $(BSTAMP) redis-server
	$(BIN)/python -m benchmarks.run

# The same run with the compiled build's columns beside the pure ones ("asyncipc-unix
# [compiled]", benchmarks/README.md): the hot modules compiled by mypyc in a copy of the
# package under $(ACCEL), the copy pytest-accel tests, rebuilt only when the sources
# changed; every asyncipc process of those columns runs from it. BENCH_ARGS adds flags, e.g. make bench-compiled BENCH_ARGS='--quick --cases reqrep'.
BENCH_ARGS ?=
bench-compiled: $(BSTAMP) redis-server
	$(BIN)/python -m benchmarks.run --build both $(BENCH_ARGS)

# The gRPC stubs under asyncipc/adapters/grpc/proto/, and the copy of bus.proto the package
# ships there, are committed; regenerate them after editing protos/asyncipc/v1/bus.proto
# (tests/test_grpc_proto.py fails until you do).
proto: $(STAMP)
	$(BIN)/python protos/generate.py

clean: pure
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build
