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

.PHONY: all install run run-replicas test test-fast test-postgres $(OTHER_PYTHONS:%=test-%) lint format typecheck bench localstack prism clean

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
## `make run WEBHOOK=1`: a webhook receiver too (python -m notifier webhook, on WEBHOOK_PORT=9000),
## which the service POSTs every outcome to, signed: both channels side by side.
WEBHOOK ?=
WEBHOOK_PORT ?= 9000
run: install localstack
	WEBHOOK='$(WEBHOOK)' WEBHOOK_PORT='$(WEBHOOK_PORT)' scripts/run-dev.sh

## Three replicas on one PostgreSQL, on http://127.0.0.1:8081, 8082 and 8083, with LocalStack SQS
## and a consumer. PostgreSQL 15 is started natively on port 5433 (Debian's postgresql-15, data in
## .run/replicas/postgres), unless VERIFY_DATABASE_URL names a server.
run-replicas: install localstack
	scripts/run-replicas.sh

## The whole suite: LocalStack and Prism are started by the tests themselves.
test: install localstack prism
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The fast part: no LocalStack, no Prism, no process of the service (the tests marked slow).
test-fast: install
	$(BIN)/python -m pytest -m "$(FAST)" $(PYTEST_ARGS)

## The HTTP-level tests with each test's store in a new PostgreSQL database (VERIFY_TEST_STORE):
## those that see the store only through make_client; POSTGRES_SKIP open the SQLite file (to
## count rows, or to lock it), so mean nothing here.
## The server is started by the tests (Debian's postgresql-15); VERIFY_TEST_DATABASE_URL names one.
POSTGRES_TESTS := tests/service/api tests/service/sms/test_challenge.py \
	tests/service/orchestrator/test_orchestrator.py tests/service/orchestrator/test_starts.py \
	tests/service/test_destinations.py tests/service/test_limits.py \
	tests/service/test_metrics.py tests/service/test_phone_numbers.py
POSTGRES_SKIP := \
	tests/service/api/twilio/test_sdk.py::test_approving_by_update_spends_no_attempt \
	tests/service/api/v1/test_views.py::test_bad_start_is_refused_and_changes_nothing \
	tests/service/api/v1/test_views.py::test_body_too_large_is_refused_before_reading \
	tests/service/api/durable/test_views.py::test_restart_of_a_masked_number_is_410 \
	tests/service/orchestrator/test_orchestrator.py::test_every_final_status_writes_one_outcome \
	tests/service/orchestrator/test_orchestrator.py::test_concurrent_right_codes_approve_once \
	tests/service/orchestrator/test_orchestrator.py::test_code_racing_the_deadline_decides_once \
	tests/service/orchestrator/test_starts.py::test_concurrent_starts_for_one_number_make_one_verification \
	tests/service/orchestrator/test_starts.py::test_commands_waiting_for_one_verification_are_capped \
	tests/service/orchestrator/test_starts.py::test_a_start_the_database_refused_is_not_counted_against_the_limits

test-postgres: install
	VERIFY_TEST_STORE=postgres $(BIN)/python -m pytest $(POSTGRES_TESTS) $(POSTGRES_SKIP:%=--deselect %) $(PYTEST_ARGS)

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
