# Everything a new machine needs is installed by these targets; nothing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PRISM := .tools/prism/node_modules/.bin/prism
PRISM_VERSION := 5.16.0
PYTEST_ARGS ?=
# Which tests test-fast and test-3.x run; empty runs them all.
FAST ?= not slow

# Other Pythons the suite runs on (`make test-3.13`), each in its own .venv-<version>.
OTHER_PYTHONS := 3.12 3.13

.PHONY: all install run test test-fast $(OTHER_PYTHONS:%=test-%) lint format typecheck bench localstack prism clean

all: lint typecheck test

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

## The fast part: no LocalStack, no Prism, no process of the service (the tests marked slow).
test-fast: install
	$(BIN)/python -m pytest -m "$(FAST)" $(PYTEST_ARGS)

## The fast part on another Python: `make test-3.13` (`make test-3.13 FAST=` for all of it).
## The interpreter is python3.13, else pyenv's 3.13.x; PYTHON_3.13=... names another.
$(OTHER_PYTHONS:%=test-%): test-%: .venv-%/.installed
	.venv-$*/bin/python -m pytest -m "$(FAST)" $(PYTEST_ARGS)

.venv-%/.installed: pyproject.toml
	@python="$(PYTHON_$*)"; \
	if [ -z "$$python" ]; then \
	    for candidate in "python$*" "env PYENV_VERSION=$$(pyenv versions --bare 2>/dev/null | grep -x '$*\.[0-9]*' | tail -n 1) python3"; do \
	        if $$candidate -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "$*".split("."))))' 2>/dev/null; then python="$$candidate"; break; fi; \
	    done; \
	fi; \
	[ -n "$$python" ] || { echo "No Python $* here: neither python$* nor pyenv's $*.x runs; set PYTHON_$*." >&2; exit 1; }; \
	echo "$$python -m venv .venv-$*"; \
	$$python -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	.venv-$*/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

lint: install
	$(BIN)/ruff check service notifier tests bench
	$(BIN)/ruff format --check service notifier tests bench

format: install
	$(BIN)/ruff format service notifier tests bench
	$(BIN)/ruff check --fix service notifier tests bench

## Strict on service/ and notifier/, looser on tests and bench (pyproject's [tool.mypy]).
typecheck: install
	$(BIN)/mypy service notifier tests bench

bench: install localstack
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(OTHER_PYTHONS:%=.venv-%) .venv-localstack .tools .pytest_cache .mypy_cache .ruff_cache
