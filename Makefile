# circuit-breaker-demo. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help build run test bench-breaker fmt lint

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

build: ## Build the release binaries
	@scripts/require-tools.sh
	$(CARGO) build --release --workspace --bins

run: build ## Start all four services locally, recommendations hanging (Ctrl-C stops them)
	scripts/run-local.sh

test: ## Run every test: unit, property and end-to-end against the real binaries
	@scripts/require-tools.sh
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

bench-breaker: ## Criterion benchmark of the breaker's closed-state call path
	@scripts/require-tools.sh
	$(CARGO) bench -p breaker --bench closed_path

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## Formatting and clippy checks
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
