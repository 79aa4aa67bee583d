# assay: `make run` runs the demo (a server on the embedded SQLite store, a simulated LLM app's
# traces scored online, the web UI); `make server` starts the plain server with the example jobs;
# `make test` runs the whole test suite (SQLite always; PostgreSQL and MariaDB when reachable).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test processes: the suite mostly waits on servers, databases and subprocesses.
TEST_PROCS ?= 4

.PHONY: run server test lint format bench screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,ray,kubernetes]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/assay demo

server: $(STAMP)
	$(BIN)/assay server --jobs-module assay.examples

test: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_PROCS) --dist loadgroup $(PYTEST_ARGS)

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
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/scoring.py

# Screenshots of the web UI on the demo's data, for the README (needs /usr/bin/chromium).
screenshots: $(STAMP)
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
