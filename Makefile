# circuit-breaker-demo. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: help demo build run test test-demo control-plane control-plane-bins crd bench-breaker fmt lint

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

demo: build $(VENV)/.demo-installed ## The story, measured: Locust at v1 then v2, a heal, results/report.html
	$(PY) loadtest/demo.py

build: ## Build the release binaries
	@scripts/require-tools.sh
	$(CARGO) build --release --workspace --bins

run: build ## Start all four services locally, recommendations hanging (Ctrl-C stops them)
	scripts/run-local.sh

test: $(VENV)/.test-installed control-plane-bins ## Run every test: unit, property, end-to-end, Kubernetes, the demo, the browser
	@scripts/require-tools.sh
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
	$(PY) -m pytest -c loadtest/pytest.ini

test-demo: $(VENV)/.test-installed ## Only the demo's tests: a short demo run, report.html and /dashboard in Chromium
	@scripts/require-tools.sh
	$(CARGO) build --workspace --bins
	$(PY) -m pytest -c loadtest/pytest.ini

# Go may live outside a non-login PATH.
export PATH := $(PATH):/usr/local/go/bin
CONTROL_PLANE_BIN := .cache/control-plane/bin

control-plane-bins: $(CONTROL_PLANE_BIN)/kube-apiserver $(CONTROL_PLANE_BIN)/kubectl $(CONTROL_PLANE_BIN)/etcd ## Build etcd, kube-apiserver and kubectl from their Go modules (once, ~10 min)

$(CONTROL_PLANE_BIN)/kube-apiserver $(CONTROL_PLANE_BIN)/kubectl: tools/control-plane/kube/go.mod tools/control-plane/kube/go.sum
	@scripts/require-tools.sh go
	cd tools/control-plane/kube && go build -o $(CURDIR)/$(CONTROL_PLANE_BIN)/ k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
	@touch $(CONTROL_PLANE_BIN)/kube-apiserver $(CONTROL_PLANE_BIN)/kubectl

$(CONTROL_PLANE_BIN)/etcd: tools/control-plane/etcd/go.mod tools/control-plane/etcd/go.sum
	@scripts/require-tools.sh go
	cd tools/control-plane/etcd && go build -o $(CURDIR)/$(CONTROL_PLANE_BIN)/etcd go.etcd.io/etcd/server/v3

control-plane: control-plane-bins ## Start the tests' etcd + kube-apiserver on 127.0.0.1 and print kubeconfigs (Ctrl-C stops)
	@scripts/require-tools.sh
	$(CARGO) run -q -p control-plane --bin control-plane -- .cache/control-plane/run

crd: ## Regenerate k8s/crd.yaml from the BreakerPolicy type
	$(CARGO) run -q -p controller --bin breaker-controller -- crd > k8s/crd.yaml

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
