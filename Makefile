# make run: fresh machine → venv, install, migrate, serve on 127.0.0.1:8766.
# make test: fresh machine → venv, install, ruff, mypy, the migrations check, then the whole suite
# on SQLite, then on PostgreSQL. make test-fast: the in-process tests only (not `live`), on SQLite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PG_URL ?= postgres://postgres@127.0.0.1:5432/test

.PHONY: run test test-fast test-sqlite test-postgres lint typecheck migrations-check clean

$(VENV)/.installed-run: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(VENV)/.installed-test: requirements.txt requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(PY) manage.py serve $(if $(WORKERS),--workers $(WORKERS))

test: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(MAKE) --no-print-directory typecheck
	$(MAKE) --no-print-directory migrations-check
	$(MAKE) --no-print-directory test-sqlite
	$(MAKE) --no-print-directory test-postgres

# Tests marked `live` (tests/conftest.py) start a server or a process; the rest run in seconds.
test-fast: $(VENV)/.installed-test
	@echo "== in-process tests on SQLite (not live)"
	env -u DATABASE_URL $(PY) -m pytest -q -m "not live"

test-sqlite: $(VENV)/.installed-test
	@echo "== test suite on SQLite"
	env -u DATABASE_URL $(PY) -m pytest -q

test-postgres: $(VENV)/.installed-test
	@if $(PY) -c "import psycopg, sys; psycopg.connect('$(PG_URL)', connect_timeout=3).close()" 2>/dev/null; then \
		echo "== test suite on PostgreSQL ($(PG_URL))"; \
		DATABASE_URL=$(PG_URL) $(PY) -m pytest -q; \
	elif [ "$${CI:-}" = "true" ]; then \
		echo "PostgreSQL at $(PG_URL) is not answering, and CI requires it"; exit 1; \
	else \
		echo "== PostgreSQL at $(PG_URL) is not answering: skipping the PostgreSQL pass"; \
	fi

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .

typecheck: $(VENV)/.installed-test
	@echo "== mypy"
	$(PY) -m mypy

# The models and the migrations agree: a change to a model comes with its migration. Run on the
# tests' settings (a throwaway TOKENPAK_HOME) and SQLite: only the models are compared.
migrations-check: $(VENV)/.installed-test
	@echo "== makemigrations --check"
	env -u DATABASE_URL DJANGO_SETTINGS_MODULE=tests.settings $(PY) manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV)
