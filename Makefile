# The two commands: `make demo` serves the demo portal, `make test` runs the whole suite.
# Both set up their own virtualenv on a fresh machine (Python 3.11).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FLASK_DEMO := $(VENV)/bin/flask --app lm_billing_plugin.demo:create_app

.PHONY: demo test test-python lint bench bench-large stress audit clean translations

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.demo-installed: $(VENV)/bin/python setup.py pyproject.toml
	$(PY) -m pip install -q -e '.[demo]'
	touch $@

$(VENV)/.test-installed: $(VENV)/bin/python setup.py pyproject.toml
	$(PY) -m pip install -q -e '.[demo,test,dev,pdf]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(FLASK_DEMO) lm-billing db upgrade
	$(PY) -m lm_billing_plugin.demo

# Two worker processes (pytest-xdist), a test file each at a time: module fixtures (simulated
# servers, a browser) are started once per file. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
test: $(VENV)/.test-installed lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The suite's SQLite part (no browser) on another Python, e.g.
# `make test-python OTHER_PYTHON=~/.pyenv/versions/3.13.0/bin/python` (.ci/run does 3.12 and 3.13).
OTHER_PYTHON ?=
OTHER_VENV = .venv-python$(shell $(OTHER_PYTHON) -c "import sys; print('%d.%d' % sys.version_info[:2])" 2>/dev/null)
test-python:
	@test -n "$(OTHER_PYTHON)" || { echo "set OTHER_PYTHON=/path/to/python3.X" >&2; exit 2; }
	test -x $(OTHER_VENV)/bin/python || $(OTHER_PYTHON) -m venv $(OTHER_VENV)
	$(OTHER_VENV)/bin/python -m pip install -q --upgrade pip
	$(OTHER_VENV)/bin/python -m pip install -q -e '.[demo,test,dev,pdf]'
	env -u LM_BILLING_TEST_POSTGRES_URL -u LM_BILLING_TEST_MARIADB_URL LM_BILLING_TEST_SQLITE_ONLY=1 \
	  $(OTHER_VENV)/bin/python -m pytest -q -m "not browser" -p no:cacheprovider \
	  -n $(TEST_WORKERS) --dist loadfile

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check lm_billing_plugin migrations tests setup.py
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The plugin's catalog (domain lm_billing): extract the marked strings into messages.pot,
# merge them into every language's .po, compile the .mo files that ship in the wheel
# (tests/test_translations.py fails when a committed .mo is older than its .po).
TRANSLATIONS := lm_billing_plugin/translations
PYBABEL := $(VENV)/bin/pybabel
translations: $(VENV)/.test-installed
	$(PYBABEL) extract -F babel.cfg -k lazy_gettext -k lazy_ngettext:1,2 -k N_ -k M_ \
	  --project=lm-billing-plugin --no-location --sort-output --omit-header --width=100 \
	  -o $(TRANSLATIONS)/messages.pot .
	$(PYBABEL) update -D lm_billing -i $(TRANSLATIONS)/messages.pot -d $(TRANSLATIONS) \
	  --no-fuzzy-matching --ignore-obsolete --width=100
	$(PYBABEL) compile -D lm_billing -d $(TRANSLATIONS) --statistics

# The fleet benchmark (issue 15) runs on SQLite and, when LM_BILLING_BENCH_POSTGRES_URL (or
# LM_BILLING_TEST_POSTGRES_URL) is set, on PostgreSQL too; figures also go to bench-results/.

# The load test at full size (docs/operations.md): 200 simulated servers (10% hostile), 20
# users, the demo under gunicorn 2 x 4 threads; on SQLite, and on PostgreSQL when
# LM_BILLING_TEST_POSTGRES_URL is set (that database is emptied first). Bounded: 15 s idle,
# at most 300 s of load each.
STRESS_ARGS ?= --servers 200 --users 20 --idle 15 --limit 300
# Then the seeded SIGKILL tests at full size (25 kills of `bills run` and of `sync --all`,
# SQLite and PostgreSQL) and the fuzz targets (Tcl decoder, reply reader) with many examples.
STRESS_KILL_SEEDS ?= 25
STRESS_FUZZ_EXAMPLES ?= 20000
stress: $(VENV)/.test-installed
	$(PY) -m lm_billing_plugin.testing.load $(STRESS_ARGS)
	if [ -n "$$LM_BILLING_TEST_POSTGRES_URL" ]; then \
	  $(PY) -m lm_billing_plugin.testing.load $(STRESS_ARGS) --database "$$LM_BILLING_TEST_POSTGRES_URL"; \
	else echo "stress: PostgreSQL skipped (set LM_BILLING_TEST_POSTGRES_URL)"; fi
	LM_BILLING_KILL_SEEDS=$(STRESS_KILL_SEEDS) $(PY) -m pytest -q -p no:cacheprovider \
	  tests/test_crash.py tests/test_billing_concurrency.py tests/test_send_kill.py -k seeded
	LM_BILLING_FUZZ_EXAMPLES=$(STRESS_FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider \
	  --hypothesis-show-statistics tests/test_fuzz.py \
	  tests/test_conformance.py::test_fuzz_client_reply_parser

# bandit (medium+ findings fail) and pip-audit (says "not checked" when offline, never "clean").
audit: $(VENV)/.test-installed
	$(PY) -m lm_billing_plugin.testing.audit

bench: $(VENV)/.test-installed
	$(PY) -m lm_billing_plugin.testing.benchmark

bench-large: $(VENV)/.test-installed
	LM_BILLING_BENCH_FLEETS=large $(PY) -m lm_billing_plugin.testing.benchmark fleet

clean:
	rm -rf $(VENV) .venv-python* build dist *.egg-info test-artifacts
