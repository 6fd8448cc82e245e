# DP2 — every target does its own set-up, so a fresh clone needs only `make run`
# or `make test`. Python 3.11+, JDK 17+ and Maven must be on PATH.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
KAFKA_LIBS := deploy/kafka/libs/.complete
PYTEST_ARGS ?=
BENCH_STAMP := $(VENV)/.bench-stamp
BENCH_ARGS ?=

.PHONY: help install jars chromium postgresql run stop test test-fast bench lint format clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml examples/folder-connector/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "DP2 needs Python 3.11 or newer; set PYTHON=python3.11")'
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps -e examples/folder-connector
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install dp2 with its test and lint tools

$(KAFKA_LIBS): deploy/kafka/pom.xml | $(STAMP)
	$(BIN)/dp2 kafka fetch

jars: $(KAFKA_LIBS) ## fetch the Apache Kafka jars from Maven Central (once)

run: install jars ## run the whole stack on 127.0.0.1 in the background; `make stop` ends it
	$(BIN)/dp2 up --detach --demo

stop: ## stop everything `make run` started
	@test -x $(BIN)/dp2 && $(BIN)/dp2 down || true

test: install jars chromium postgresql ## run every test against a real Kafka the tests start themselves
	$(BIN)/pytest $(PYTEST_ARGS)

# The dashboard tests drive Debian's chromium; Playwright must not download a browser.
chromium:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

# The stores' contract suites start a throw-away PostgreSQL from Debian's binaries
# (initdb, pg_ctl; tests/postgres_server.py), which are not on PATH by default.
postgresql:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql; }

test-fast: install ## unit tests only (no broker)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) jars ## end-to-end benchmark on its own stack (BENCH_ARGS='--quick', '--rate 100,500')
	$(BIN)/python -m brokers.bench $(BENCH_ARGS)

lint: install ## ruff and strict mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: stop ## remove the venv, caches, Kafka data and jars
	rm -rf $(VENV) var deploy/kafka/libs .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
