# assay: `make run` starts a worker on the embedded SQLite store with the example jobs;
# `make test` runs the whole test suite (SQLite always; PostgreSQL and MariaDB when reachable).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,ray,kubernetes]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/assay db upgrade
	$(BIN)/assay worker --jobs-module assay.examples

test: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
