# The two commands: `make demo` serves the demo portal, `make test` runs the whole suite.
# Both set up their own virtualenv on a fresh machine (Python 3.11).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FLASK_DEMO := $(VENV)/bin/flask --app lm_billing_plugin.demo:create_app

.PHONY: demo test lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.demo-installed: $(VENV)/bin/python setup.py pyproject.toml
	$(PY) -m pip install -q -e '.[demo]'
	touch $@

$(VENV)/.test-installed: $(VENV)/bin/python setup.py pyproject.toml
	$(PY) -m pip install -q -e '.[demo,test]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(FLASK_DEMO) lm-billing db upgrade
	$(PY) -m lm_billing_plugin.demo

test: $(VENV)/.test-installed lint
	$(PY) -m pytest

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check lm_billing_plugin migrations tests setup.py
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(VENV)/.test-installed
	$(PY) -m lm_billing_plugin.testing.benchmark

clean:
	rm -rf $(VENV) build dist *.egg-info test-artifacts
