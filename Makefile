# circuit-breaker-demo. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: help demo build run test test-demo fault-matrix bench control-plane control-plane-bins tools manifests lint-dockerfile images kind-up deploy port-forward loadtest-k8s kind-down bench-breaker fmt lint

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-19s %s\n", $$1, $$2}'

demo: build $(VENV)/.demo-installed ## The story, measured: Locust at v1 then v2, a heal, results/report.html
	$(PY) loadtest/demo.py

build: ## Build the release binaries
	@scripts/require-tools.sh
	$(CARGO) build --release --workspace --bins

run: build ## Start all four services locally, recommendations hanging (Ctrl-C stops them)
	scripts/run-local.sh

test: $(VENV)/.test-installed control-plane-bins tools lint-dockerfile ## Run every test: unit, property, end-to-end, Kubernetes, chart, demo, browser
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

TOOLS := .cache/tools/bin
HELM := $(TOOLS)/helm
KIND := $(TOOLS)/kind
HELM_VERSION := v3.22.0
KIND_VERSION := v0.33.0
IMAGE := circuit-breaker-demo:0.1.0
CLUSTER := circuit-breaker-demo

tools: $(HELM) ## Pinned helm (and kind, for kind-up) built from their Go modules into .cache/tools

$(HELM):
	@scripts/require-tools.sh go
	GOBIN=$(CURDIR)/$(TOOLS) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(KIND):
	@scripts/require-tools.sh go
	GOBIN=$(CURDIR)/$(TOOLS) go install sigs.k8s.io/kind@$(KIND_VERSION)

manifests: tools ## Regenerate k8s/ and the chart's CRD from the chart and the Rust types (a test checks drift)
	$(CARGO) build -q -p controller --bin breaker-controller
	scripts/render-manifests.sh
	cp k8s/crd.yaml helm/circuit-breaker-demo/crds/breakerpolicies.yaml

lint-dockerfile: $(VENV)/.test-installed ## hadolint the Dockerfile
	$(VENV)/bin/hadolint Dockerfile

# ---- Needs Docker and kind; CI has neither (see the README). ----

images: ## Build the image with all five binaries (Docker)
	docker build -t $(IMAGE) --build-arg VERSION=0.1.0 .

kind-up: $(KIND) images ## Create the kind cluster and load the image
	$(KIND) get clusters | grep -qx $(CLUSTER) || $(KIND) create cluster --name $(CLUSTER) --config kind-config.yaml
	$(KIND) load docker-image $(IMAGE) --name $(CLUSTER)

deploy: tools ## Install the chart into namespace demo of the current kube context
	$(HELM) upgrade --install circuit-breaker-demo helm/circuit-breaker-demo --namespace demo --create-namespace --wait

port-forward: ## Forward v1 to 127.0.0.1:8080 and v2 to 127.0.0.1:8090 (Ctrl-C stops)
	kubectl port-forward -n demo svc/api-gateway-v1 8080:8080 & \
	kubectl port-forward -n demo svc/api-gateway-v2 8090:8090 & \
	trap 'kill $$(jobs -p)' INT TERM EXIT; wait

loadtest-k8s: $(VENV)/.demo-installed ## Locust at both forwarded gateways, 1 minute each (after make port-forward)
	$(VENV)/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 --headless -u 100 -r 10 -t 1m --only-summary
	$(VENV)/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8090 --headless -u 100 -r 10 -t 1m --only-summary

kind-down: $(KIND) ## Delete the kind cluster
	$(KIND) delete cluster --name $(CLUSTER)

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

fault-matrix: ## Rewrite docs/fault-matrix.md from what the gateways do under every fault
	$(CARGO) build --workspace --bins
	UPDATE_FAULT_MATRIX=1 $(CARGO) test -p e2e --test fault_matrix

bench: build $(VENV)/.demo-installed ## v2 under 256 connections for 60 s with recommendations hanging, vs product direct and nginx
	@scripts/require-tools.sh bench
	cd loadtest && ../$(PY) bench.py

bench-breaker: ## Criterion benchmark of the breaker's closed-state call path
	@scripts/require-tools.sh
	$(CARGO) bench -p breaker --bench closed_path

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## Formatting and clippy checks
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
