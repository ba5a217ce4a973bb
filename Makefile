# One command each for what people do here. `make test` is exactly what CI runs (.ci/run).
PY ?= python3
UV := $(PY) -m uv
VENV := .venv
BIN := $(VENV)/bin
# the native JSON decoder (native/) is built by cargo at `uv sync`: rustup installs cargo in ~/.cargo/bin,
# which a non-login shell (CI's) may not have on PATH
export PATH := $(PATH):$(HOME)/.cargo/bin
NATIVE := native/pyproject.toml native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)

.PHONY: setup services kafka-up kafka-down cassandra-up cassandra-down demo test test-fast lint chaos bench bench-data bench-limit-data bench-limit clean

# Bytecode is compiled at install time (dependencies by uv, Sluice's own src/ by compileall, which only
# redoes changed files), so `import sluice` stays fast where Python is told not to write bytecode
# (PYTHONDONTWRITEBYTECODE=1 stops writing at import, not reading).
setup: $(VENV)/.synced
	@$(BIN)/python -m compileall -q -j 0 src

$(VENV)/.synced: pyproject.toml uv.lock Makefile $(NATIVE)
	@$(PY) -m uv --version >/dev/null 2>&1 || $(PY) -m pip install --quiet --disable-pip-version-check uv
	@if command -v cargo >/dev/null 2>&1; then echo "$(UV) sync --frozen --quiet --compile-bytecode"; \
		$(UV) sync --frozen --quiet --compile-bytecode; \
	else echo "cargo not found: installing Sluice without its native JSON decoder (slower parsing; Rust: https://rustup.rs)"; \
		$(UV) sync --frozen --quiet --compile-bytecode --no-group native; fi
	@touch $@

services:  ## the servers some tests run against (Redis), from Debian packages
	bash scripts/install-services.sh

kafka-up:  ## Kafka (KRaft) and Apicurio Registry from Maven Central, on loopback; last line: bootstrap=HOST:PORT
	@bash scripts/registry.sh up $(CURDIR)/.sluice/registry
	@bash scripts/kafka.sh up $(CURDIR)/.sluice/kafka

kafka-down:
	@bash scripts/kafka.sh down $(CURDIR)/.sluice/kafka
	@bash scripts/registry.sh down $(CURDIR)/.sluice/registry

cassandra-up:  ## a single-node Cassandra 5 from Maven Central, on loopback; last line: contact=HOST:PORT
	@bash scripts/cassandra.sh up $(CURDIR)/.sluice/cassandra

cassandra-down:
	@bash scripts/cassandra.sh down $(CURDIR)/.sluice/cassandra

demo: setup  ## the real-time analytics job on the embedded default
	$(BIN)/sluice demo --events 1000000

test: setup services  ## the whole suite (what CI runs)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest

# Skips the tests marked slow: every test that starts Kafka, the schema registry or Cassandra (tests/kafka, the Kafka
# page of the docs; tests/conftest.py marks them), the kill -9 crash runs (tests/test_crash_recovery.py),
# the aggregate property test against DuckDB and w4 at batch size 7 (about 3 minutes on 2 cores).
test-fast: setup
	$(BIN)/python -m pytest -x -q -m "not slow"

# The chaos suite: runs bench/chaos/ (kill -9 soak, broker faults, checkpoint damage, plan changes, poison fuzz)
# and rewrites the faults table in docs/guarantees.md. ARGS="--quick" for small counts, ARGS="--only kill-soak".
chaos: setup  ## the fault soaks, and the table in docs/guarantees.md regenerated from them
	$(BIN)/python bench/chaos/table.py $(ARGS)

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench-data: setup  ## 1M and 5M benchmark events under bench/data/
	@mkdir -p bench/data
	@test -f bench/data/events-1m.jsonl || $(BIN)/python bench/gen_events.py events --n 1000000 --out bench/data/events-1m.jsonl
	@test -f bench/data/events-5m.jsonl || $(BIN)/python bench/gen_events.py events --n 5000000 --span-s 36000 --out bench/data/events-5m.jsonl

bench-limit-data: bench-data  ## + 10M events, 1M and 10M transactions (w4) under bench/data/ (about 4 GB)
	@test -f bench/data/events-10m.jsonl || $(BIN)/python bench/gen_events.py events --n 10000000 --span-s 72000 --out bench/data/events-10m.jsonl
	@test -f bench/data/tx-1m.jsonl || $(BIN)/python bench/gen_events.py transactions --n 1000000 --out bench/data/tx-1m.jsonl
	@test -f bench/data/tx-10m.jsonl || $(BIN)/python bench/gen_events.py transactions --n 10000000 --span-s 72000 --out bench/data/tx-10m.jsonl

bench-limit: bench-limit-data  ## w1–w4: Sluice, DuckDB, Polars, plain Python side by side, 1M and 10M, medians of 5
	$(BIN)/python bench/batch_limit.py --runs 5 --sizes 1m,10m

bench: bench-data  ## w1–w3 side by side with the plain-Python baseline, medians of 3
	$(BIN)/python bench/compare.py --input bench/data/events-1m.jsonl --repeat 3

clean:
	rm -rf $(VENV) out .sluice bench/data bench/results
