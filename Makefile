# assay: `make run` runs the demo (a server on the embedded SQLite store, a simulated LLM app's
# traces scored online, the web UI); `make server` starts the plain server with the example jobs;
# both install only what they need. `make test` installs the test tools too and runs the whole
# test suite (SQLite always; PostgreSQL and MariaDB when reachable).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two installs into one .venv: what the demo and the plain server need (the server extra and
# the tracing SDK), and everything (test tools, database drivers, the Ray and Kubernetes
# executor plugins) for the tests, linters and benchmarks. The second includes the first.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
# Test processes: the suite mostly waits on servers, databases and subprocesses.
TEST_PROCS ?= 4

.PHONY: run server test test-fast lint format bench screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server,tracing]'
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,ray,kubernetes]'
	touch $(STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/assay demo

server: $(RUN_STAMP)
	$(BIN)/assay server --jobs-module assay.examples

# `make test` runs every test, the `slow` ones too (as CI does); `make test-fast` (and a plain
# `pytest`) leaves out the slow ones: kill -9, multi-replica and 10k-trace tests.
test: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_PROCS) --dist loadgroup -m "" $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_PROCS) --dist loadgroup -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: $(STAMP)
	$(BIN)/python bench/jobs.py
	$(BIN)/python bench/executors.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/mlflow_runs.py
	$(BIN)/python bench/ingest.py --exporters 4,16 --processes 1,2 --batch 50  # SDK-sized exports
	$(BIN)/python bench/scoring.py
	$(BIN)/python bench/scale.py --quick  # the 1M-row run: bench/README.md, scale.py
	$(BIN)/python bench/ray_cluster.py

# Screenshots of the web UI on the demo's data, for the README (needs /usr/bin/chromium).
screenshots: $(STAMP)
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
