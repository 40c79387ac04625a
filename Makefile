# circuit-breaker-demo. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: help demo demo-endpoints demo-overload build run test test-disk msrv test-setup test-tiers test-demo test-cluster fault-matrix pictures bench control-plane control-plane-bins kind-node-bins tools manifests lint-dockerfile stand-ins images kind-up deploy deploy-previous port-forward load-image loadtest-k8s loadtest-k8s-endpoints loadtest-k8s-overload measure-scale measure-flood measure-soak kind-down bench-breaker fmt lint

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-19s %s\n", $$1, $$2}'

demo: build $(VENV)/.demo-installed ## The story, measured: Locust at v1 then v2, a heal, results/report.html
	$(PY) loadtest/demo.py

demo-endpoints: build $(VENV)/.demo-installed ## The second chapter: one recommendations pod of three hangs; v1, v2 scope Service, v2 scope Endpoint side by side
	DEMO_CHAPTER=endpoints $(PY) loadtest/demo.py

demo-overload: build $(VENV)/.demo-installed ## The third chapter: a 10 s slowdown under steady arrivals; v1 retrying, v2 with every defence, then each off in turn
	DEMO_CHAPTER=overload $(PY) loadtest/demo.py

build: ## Build the release binaries
	@scripts/require-tools.sh
	$(CARGO) build --release --workspace --bins

run: build ## Start all four services locally, recommendations hanging (Ctrl-C stops them)
	@scripts/require-tools.sh python
	python3 loadtest/stack.py

# What `.ci/run` from a fresh clone took on disk at its peak, measured 2026-12-07 on a machine
# without Docker, images or Go's caches (a cold run): 24.6 GB above its start, at the end of the
# kind tier (the clone's target/ 3.9 GB, Go's module and build caches 9.1 GB, the images and
# the kind cluster, the builder stand-in's stages). A warm run needs less; this asks for the
# cold peak, with a little room.
TEST_DISK_GB ?= 26
test-disk:
	@scripts/require-tools.sh disk $(TEST_DISK_GB)

test: test-disk ## Run every test tier: unit, property, processes, API server, chart, demo, browser, kind cluster; then the figures and totals
	@scripts/require-tools.sh
	@mkdir -p .cache
	@set -o pipefail; $(MAKE) --no-print-directory test-tiers 2>&1 | tee .cache/test.log; \
	  status=$$?; scripts/test-summary.sh .cache/test.log; exit $$status

# The one minimum Rust: the workspace's rust-version, which the Dockerfile's builder pins too.
RUST_VERSION := $(shell sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
msrv: ## Check the workspace with exactly its rust-version (rustup installs it), as the Dockerfile's builder compiles it
	@scripts/require-tools.sh rustup
	@grep -qx 'ARG RUST_VERSION=$(RUST_VERSION)' Dockerfile || { echo "Dockerfile: ARG RUST_VERSION is not $(RUST_VERSION), the workspace's rust-version" >&2; exit 1; }
	rustup toolchain install $(RUST_VERSION) --profile minimal --no-self-update
	$(CARGO) +$(RUST_VERSION) check --locked --workspace --bins

# The tiers past `cargo test`'s own (which needs nothing built) are #[ignore]d with their tier
# as the reason; --include-ignored is the one switch that runs them.
# Each is timed (scripts/timed.sh): the summary says where the time went.
test-tiers:
	scripts/timed.sh "setup (venv, Go-built etcd, Kubernetes and helm, hadolint, msrv)" \
	  $(MAKE) --no-print-directory test-setup
	scripts/timed.sh "debug build" $(CARGO) build --workspace --bins
	scripts/timed.sh "cargo test (unit, property, processes, API server, chart)" \
	  $(CARGO) test --workspace -- --include-ignored --nocapture
	scripts/timed.sh "demo and browser (pytest)" $(PY) -m pytest -c loadtest/pytest.ini loadtest/tests
	scripts/timed.sh "kind cluster" $(MAKE) --no-print-directory test-cluster

# What the tiers need installed or built first (timed as the first tier).
test-setup: $(VENV)/.test-installed control-plane-bins tools lint-dockerfile msrv

test-cluster: $(VENV)/.test-installed control-plane-bins tools $(KIND) ## The Kubernetes path for real: a kind cluster made, tested and deleted
	KUBECTL=$(CURDIR)/$(KUBE_BIN)/kubectl $(PY) -m pytest -c tests/cluster/pytest.ini tests/cluster

test-demo: $(VENV)/.test-installed ## Only the demo's tests: a short demo run, report.html and /dashboard in Chromium
	@scripts/require-tools.sh
	$(CARGO) build --workspace --bins
	$(PY) -m pytest -c loadtest/pytest.ini loadtest/tests

# Go may live outside a non-login PATH.
export PATH := $(PATH):/usr/local/go/bin
# Kubernetes binaries, one version for the test control plane and the kind node image, built
# from the k8s.io/kubernetes module (tools/control-plane/kube) with the version stamped in, as
# kubeadm needs to find matching images; static, so they also run in images FROM nothing.
KUBE_VERSION := v1.34.4
KUBE_BIN := .cache/kubernetes/bin
KUBE_CMDS := kube-apiserver kubectl kubelet kubeadm kube-controller-manager kube-scheduler kube-proxy
KUBE_LDFLAGS := -s -w $(foreach pkg,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
  -X $(pkg).gitVersion=$(KUBE_VERSION) -X $(pkg).gitMajor=1 \
  -X $(pkg).gitMinor=$(word 2,$(subst ., ,$(KUBE_VERSION))) -X $(pkg).gitTreeState=clean)
COREDNS_VERSION := v1.12.1
# Builds the k8s.io/kubernetes commands given into KUBE_BIN, the version stamped in.
KUBE_GO_BUILD = cd tools/control-plane/kube && CGO_ENABLED=0 go build -ldflags '$(KUBE_LDFLAGS)' -o $(CURDIR)/$(KUBE_BIN)/ $(addprefix k8s.io/kubernetes/cmd/,$(1))
# The kubectl for the Makefile's own commands: the one on PATH, else the one built here
# (alone, a few minutes, when the other Kubernetes binaries are not built either).
KUBECTL ?= $(or $(shell command -v kubectl),$(CURDIR)/$(KUBE_BIN)/kubectl)
KUBECTL_BUILT := $(if $(filter $(CURDIR)/$(KUBE_BIN)/kubectl,$(KUBECTL)),$(KUBE_BIN)/kubectl)

control-plane-bins: $(KUBE_BIN)/.kubernetes-$(KUBE_VERSION) $(KUBE_BIN)/etcd ## Build etcd and the Kubernetes binaries from their Go modules (once, ~15 min)

$(KUBE_BIN)/.kubernetes-$(KUBE_VERSION): tools/control-plane/kube/go.mod tools/control-plane/kube/go.sum
	@scripts/require-tools.sh go
	$(call KUBE_GO_BUILD,$(KUBE_CMDS))
	@touch $@

$(KUBE_BIN)/kubectl: tools/control-plane/kube/go.mod tools/control-plane/kube/go.sum
	@scripts/require-tools.sh go
	$(call KUBE_GO_BUILD,kubectl)

$(KUBE_BIN)/etcd: tools/control-plane/etcd/go.mod tools/control-plane/etcd/go.sum
	@scripts/require-tools.sh go
	cd tools/control-plane/etcd && CGO_ENABLED=0 go build -ldflags '-s -w' -o $(CURDIR)/$(KUBE_BIN)/etcd go.etcd.io/etcd/server/v3

# What the offline kind node image adds: CoreDNS from its module, and the pod sandbox's pause.
kind-node-bins: control-plane-bins $(KUBE_BIN)/coredns $(KUBE_BIN)/pause

$(KUBE_BIN)/coredns:
	@scripts/require-tools.sh go
	GOBIN=$(CURDIR)/$(KUBE_BIN) CGO_ENABLED=0 go install -ldflags '-s -w' github.com/coredns/coredns@$(COREDNS_VERSION)

$(KUBE_BIN)/pause: tools/kind/pause.c
	$(CC) -static -O2 -o $@ $<

# The kind cluster's NetworkPolicy enforcement (tools/kind/network-policy.yaml), on every path.
KUBE_ROUTER_VERSION := v2.1.0
$(KUBE_BIN)/kube-router:
	@scripts/require-tools.sh go
	GOBIN=$(CURDIR)/$(KUBE_BIN) CGO_ENABLED=0 go install -ldflags '-s -w' github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$(KUBE_ROUTER_VERSION)

control-plane: control-plane-bins ## Start the tests' etcd + kube-apiserver on 127.0.0.1 and print kubeconfigs (Ctrl-C stops)
	@scripts/require-tools.sh
	$(CARGO) run -q -p control-plane --bin control-plane -- .cache/control-plane/run

TOOLS := .cache/tools/bin
HELM := $(TOOLS)/helm
KIND := $(TOOLS)/kind
HELM_VERSION := v3.22.0
KIND_VERSION := v0.33.0
# The workspace's version is the app's: the image tag, and the chart's appVersion (a chart test
# checks they agree).
APP_VERSION := $(shell sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
IMAGE := circuit-breaker-demo:$(APP_VERSION)
CLUSTER ?= circuit-breaker-demo

tools: $(HELM) ## Pinned helm (and kind, for kind-up) built from their Go modules into .cache/tools

$(HELM):
	@scripts/require-tools.sh go
	GOBIN=$(CURDIR)/$(TOOLS) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(KIND):
	@scripts/require-tools.sh go
	GOBIN=$(CURDIR)/$(TOOLS) go install sigs.k8s.io/kind@$(KIND_VERSION)

manifests: tools $(VENV)/.lint-installed ## Regenerate k8s/, the chart's CRD, its README's values table and values.schema.json from the chart and the Rust types (a test and make lint check drift)
	$(CARGO) build -q -p controller --bin breaker-controller
	scripts/render-manifests.sh
	cp k8s/crd.yaml helm/circuit-breaker-demo/crds/breakerpolicies.yaml
	$(PY) scripts/chart-docs.py

lint-dockerfile: $(VENV)/.lint-installed ## hadolint the Dockerfiles
	$(VENV)/bin/hadolint Dockerfile tools/kind/*.Dockerfile tools/stand-ins/*.Dockerfile tools/loadtest/*.Dockerfile

# ---- Kubernetes in kind. Docker is started (and installed, as root) when missing; with no
# registry, the node and app images are built here (OFFLINE=auto|1|0, see scripts/offline.sh).
KIND_NODE_IMAGE ?= kindest/node:v1.34.0
# One worker by default (this machine's size); kind-config-3-workers.yaml spreads pods over three.
KIND_CONFIG ?= kind-config.yaml
# The namespace and the Helm release make deploy installs, and port-forward, loadtest-k8s* and
# measure-* drive.
NAMESPACE ?= demo
RELEASE ?= circuit-breaker-demo
# The image of the chapters' load runs from inside the cluster (Locust, the locustfiles, kubectl).
LOAD_IMAGE := circuit-breaker-demo/locust:$(APP_VERSION)
export KIND CLUSTER IMAGE KUBE_VERSION KIND_VERSION KIND_NODE_IMAGE KIND_CONFIG KUBE_BIN KUBECTL NAMESPACE RELEASE LOAD_IMAGE

stand-ins: ## Local images under the upstream names OFFLINE=0 pulls (builder, bases, kind node), as CI runs that path; `scripts/stand-ins.sh remove` untags them
	scripts/stand-ins.sh

images: ## Build the image with all five binaries from the Dockerfile (locally when no registry answers)
	@scripts/require-tools.sh
	scripts/app-image.sh $(IMAGE) $(APP_VERSION)

kind-up: $(KIND) $(KUBECTL_BUILT) ## Create the kind cluster (Docker and node image made here when needed), load the image
	scripts/kind-up.sh

# The chart make deploy installs (make deploy-previous points it at chart 0.1.0's, which has no
# loadtest value).
CHART ?= helm/circuit-breaker-demo
DEPLOY_VALUES := $(if $(filter helm/circuit-breaker-demo,$(CHART)),--set loadtest.enabled=true)
# --reset-values: the chart's defaults plus HELM_ARGS, never what an earlier make deploy set
# (Helm 3 reuses the last release's values when an upgrade gives none).
deploy: tools $(KUBECTL_BUILT) ## Install the chart as RELEASE into NAMESPACE (demo; restricted Pod Security, the load runs' parts on): the chart's defaults plus HELM_ARGS; wait for every pod
	$(KUBECTL) create namespace $(NAMESPACE) --dry-run=client -o yaml | $(KUBECTL) apply -f -
	$(KUBECTL) label --overwrite namespace $(NAMESPACE) pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted
	@# Helm installs crds/ once and never upgrades it: apply the CRD first, so an upgrade brings it too.
	$(KUBECTL) apply --server-side --force-conflicts -f $(CHART)/crds/
	$(HELM) upgrade --install $(RELEASE) $(CHART) --namespace $(NAMESPACE) --reset-values --wait --timeout 5m \
	  $(DEPLOY_VALUES) $(HELM_ARGS)

port-forward: $(KUBECTL_BUILT) ## Forward RELEASE's v1 to 127.0.0.1:8080, v2 to :8090, recommendations to :8082, restarting when a pod goes (Ctrl-C stops)
	scripts/port-forward.sh api-gateway-v1:8080 api-gateway-v2:8090 recommendations-service:8082

# The chapters in the cluster, driven from inside it (loadtest/incluster.py): the demo and
# Locust's master in one pod, LOCUST_WORKERS (2) workers in others, results/ as make demo.
load-image: $(KIND) ## Build the load image of the cluster runs (Locust, the locustfiles, kubectl) and load it into the kind cluster
	scripts/load-image.sh $(LOAD_IMAGE)

loadtest-k8s: $(VENV)/.demo-installed load-image ## The demo's three phases from inside the cluster (after make deploy), results/ as make demo
	$(PY) loadtest/incluster.py

loadtest-k8s-endpoints: $(VENV)/.demo-installed load-image ## The second chapter from inside the cluster (recommendations at 3 replicas, see docs/chapter-2-one-bad-pod.md): v1, v2 scope Service, v2 scope Endpoint
	DEMO_CHAPTER=endpoints $(PY) loadtest/incluster.py

loadtest-k8s-overload: $(VENV)/.demo-installed load-image ## The third chapter from inside the cluster (v1 with 3 retries and a 1 s timeout, see docs/chapter-3-overload.md): v1, v2 and each defence off in turn
	DEMO_CHAPTER=overload V1_UPSTREAM_TIMEOUT=$${V1_UPSTREAM_TIMEOUT:-1s} $(PY) loadtest/incluster.py

# The controller at scale (docs/breakerpolicy.md, "At scale"): after make kind-up KIND_CONFIG=kind-config-3-workers.yaml.
SCALE_REPLICAS ?= 20
deploy-previous: $(KIND) ## Install chart 0.1.0 with its own image (built once from its commit) instead: the release an upgrade starts from
	scripts/deploy-previous.sh $(HELM_ARGS)

# PREVIOUS=1 measures chart 0.1.0 instead (one controller, no Lease, before the reconcile-storm fix).
SCALE_DEPLOY := $(if $(filter 1,$(PREVIOUS)),deploy-previous,deploy)
measure-scale: $(KIND) ## v2 at 20 replicas over 3 workers, recommendations flaky, 2 minutes of load: the controller's API traffic, CPU, memory, latency (PREVIOUS=1: chart 0.1.0's)
	$(MAKE) --no-print-directory $(SCALE_DEPLOY) HELM_ARGS="--set gatewayV2.replicas=$(SCALE_REPLICAS) --set recommendations.faultMode=flaky $(HELM_ARGS)"
	scripts/base-image.sh circuit-breaker-demo/debian:bookworm
	$(KIND) load docker-image circuit-breaker-demo/debian:bookworm --name $(CLUSTER)
	KUBECTL=$(KUBECTL) python3 loadtest/scale.py

# Ten minutes under load with recommendations flapping and rolled every 30 s (loadtest/soak.py):
# v2's and the controller's RSS and /metrics series at minute 1 and at the end.
measure-soak: $(KIND) ## Ten minutes of pages, recommendations flaky and restarted every 30 s: does v2's or the controller's memory or series count grow?
	$(MAKE) --no-print-directory deploy HELM_ARGS="--set recommendations.replicas=3 --set recommendations.faultMode=flaky $(HELM_ARGS)"
	scripts/base-image.sh circuit-breaker-demo/debian:bookworm
	$(KIND) load docker-image circuit-breaker-demo/debian:bookworm --name $(CLUSTER)
	KUBECTL=$(KUBECTL) python3 loadtest/soak.py

kind-down: $(KIND) ## Delete the kind cluster (and kind's network when no other cluster uses it), stop the dockerd that kind-up started
	@# No Docker daemon answering means no kind cluster runs: nothing to delete, and a second
	@# kind-down (after the one that stopped dockerd) says so instead of failing.
	if docker info >/dev/null 2>&1; then \
	  $(KIND) delete cluster --name $(CLUSTER) && { docker network rm kind >/dev/null 2>&1 || true; }; \
	else echo "kind-down: no Docker daemon answers here (none running, or its socket is not yours): nothing for kind to delete"; fi
	scripts/docker-down.sh

# Locust (and, for the tests, pytest and Playwright) in a local virtualenv, reinstalled when a
# requirements file changes.
$(VENV)/.demo-installed: loadtest/requirements.txt
	@scripts/require-tools.sh python
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r loadtest/requirements.txt
	touch $@

# The lints need the test requirements (ruff, hadolint) but not the browser.
$(VENV)/.lint-installed: loadtest/requirements.txt loadtest/requirements-test.txt
	@scripts/require-tools.sh python
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r loadtest/requirements-test.txt
	touch $@ $(VENV)/.demo-installed

$(VENV)/.test-installed: $(VENV)/.lint-installed
	@scripts/require-tools.sh chromium
	touch $@

fault-matrix: ## Rewrite docs/fault-matrix.md from what the gateways do under every fault
	$(CARGO) build --workspace --bins
	UPDATE_FAULT_MATRIX=1 $(CARGO) test -p e2e --test fault_matrix

# The docs' pictures from their sources: Graphviz for the diagrams; the response-time chart
# from a make demo's report when REPORT names one (it is a real run's, so not redrawn unasked).
pictures: $(if $(REPORT),$(VENV)/.test-installed) ## Draw docs/pictures/*.svg from their .dot sources (Graphviz); REPORT=results/report.html also redraws docs/images/response-time.png from a make demo's report
	@scripts/require-tools.sh graphviz
	for source in docs/pictures/*.dot; do dot -Tsvg "$$source" -o "$${source%.dot}.svg"; done
	$(if $(REPORT),$(PY) loadtest/chart_png.py $(REPORT) docs/images/response-time.png)

bench: build $(VENV)/.demo-installed ## v2 under 256 connections for 60 s with recommendations hanging, vs product direct and nginx
	@scripts/require-tools.sh bench
	cd loadtest && ../$(PY) bench.py

measure-flood: build $(VENV)/.demo-installed ## v2's pages under wrk, alone and while 2,000 clients hold /circuit-status waits (FLOOD_WAITS)
	@scripts/require-tools.sh bench
	cd loadtest && ../$(PY) flood.py

bench-breaker: ## Criterion benchmark of the breaker's closed-state call path
	@scripts/require-tools.sh
	$(CARGO) bench -p breaker --bench closed_path

fmt: $(VENV)/.lint-installed ## Format the code
	$(CARGO) fmt --all
	$(VENV)/bin/ruff format loadtest tests/cluster scripts

lint: $(VENV)/.lint-installed ## Formatting and lint checks: Rust (rustfmt, clippy), Python (ruff), the chart's generated docs, and every name the docs use
	@# rustfmt and clippy come with rustup's default profile; a minimal toolchain lacks them.
	@if command -v rustup >/dev/null 2>&1; then rustup component add rustfmt clippy >/dev/null 2>&1 || true; fi
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff format --check loadtest tests/cluster scripts
	$(VENV)/bin/ruff check loadtest tests/cluster scripts
	$(PY) scripts/chart-docs.py --check
	$(PY) scripts/check-docs.py
