# circuit-breaker-demo. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: help demo build run test test-demo bench-breaker fmt lint

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

demo: build $(VENV)/.demo-installed ## The story, measured: Locust at v1 then v2, a heal, results/report.html
	$(PY) loadtest/demo.py

build: ## Build the release binaries
	@scripts/require-tools.sh
	$(CARGO) build --release --workspace --bins

run: build ## Start all four services locally, recommendations hanging (Ctrl-C stops them)
	scripts/run-local.sh

test: $(VENV)/.test-installed ## Run every test: unit, property, end-to-end, the demo and the browser tests
	@scripts/require-tools.sh
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
	$(PY) -m pytest -c loadtest/pytest.ini

test-demo: $(VENV)/.test-installed ## Only the demo's tests: a short demo run, report.html and /dashboard in Chromium
	@scripts/require-tools.sh
	$(CARGO) build --workspace --bins
	$(PY) -m pytest -c loadtest/pytest.ini

# Locust (and, for the tests, pytest and Playwright) in a local virtualenv, reinstalled when a
# requirements file changes.
$(VENV)/.demo-installed: loadtest/requirements.txt
	@scripts/require-tools.sh python
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r loadtest/requirements.txt
	touch $@

$(VENV)/.test-installed: loadtest/requirements.txt loadtest/requirements-test.txt
	@scripts/require-tools.sh python chromium
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r loadtest/requirements-test.txt
	touch $@ $(VENV)/.demo-installed

bench-breaker: ## Criterion benchmark of the breaker's closed-state call path
	@scripts/require-tools.sh
	$(CARGO) bench -p breaker --bench closed_path

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## Formatting and clippy checks
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
