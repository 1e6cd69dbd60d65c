# Everything a new machine needs is installed by these targets; nothing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PRISM := .tools/prism/node_modules/.bin/prism
PRISM_VERSION := 5.16.0
PYTEST_ARGS ?=

.PHONY: all install run test lint format typecheck bench localstack prism clean

all: lint test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $@

localstack:
	scripts/localstack.sh install

prism: $(PRISM)

$(PRISM):
	mkdir -p .tools/prism
	cd .tools/prism && npm install --silent --no-audit --no-fund --no-save @stoplight/prism-cli@$(PRISM_VERSION)
	test -x $@

## The service on http://127.0.0.1:8080 with LocalStack SQS and a consumer printing every outcome.
run: install localstack
	scripts/run-dev.sh

## The whole suite: LocalStack and Prism are started by the tests themselves.
test: install localstack prism
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check service notifier tests bench
	$(BIN)/ruff format --check service notifier tests bench

format: install
	$(BIN)/ruff format service notifier tests bench
	$(BIN)/ruff check --fix service notifier tests bench

typecheck: install
	$(BIN)/mypy service notifier

bench: install localstack
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .venv-localstack .tools .pytest_cache .mypy_cache .ruff_cache
