# streamq developer entry points. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CLUSTER := tests/cluster
# Runs the rest of a recipe line against the local control plane, starting it if needed.
WITH_CLUSTER := eval "$$($(CLUSTER)/up)" &&
DEMO_NS := streamq-demo

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build the streamq binary (debug)
	cargo build --bin streamq

.PHONY: crds
crds: ## Regenerate crds/ and the chart's copy from the code
	cargo run -q --bin streamq -- crd --out-dir crds
	cargo run -q --bin streamq -- crd --out-dir charts/streamq/crds
	cargo run -q --bin streamq -- crd --markdown --out-dir docs

.PHONY: cluster-up
cluster-up: ## Start the local control plane and redis-server (prints export lines)
	@$(CLUSTER)/up

.PHONY: cluster-down
cluster-down: demo-stop ## Stop the local control plane and redis-server
	$(CLUSTER)/down

.PHONY: test
test: demo-stop ## Run every test against the local control plane (starts it; stops a demo operator)
	$(WITH_CLUSTER) cargo test --no-fail-fast

.PHONY: chaos
chaos: ## Fault-injection suite, the disruptive scenarios included (restarts the apiserver it runs against)
	$(WITH_CLUSTER) cargo test --test chaos -- --include-ignored --test-threads=1 --nocapture

.PHONY: demo
demo: build ## Control plane + Redis, chart, operator, examples; then `kubectl get streamq`
	$(WITH_CLUSTER) scripts/demo "$(DEMO_NS)"

.PHONY: demo-stop
demo-stop: ## Stop the operator that `make demo` started
	@scripts/demo-stop

.PHONY: lint
lint: ## rustfmt, clippy and helm lint
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	$(WITH_CLUSTER) helm lint --strict charts/streamq

.PHONY: real-node-check
real-node-check: ## Check the local cluster's real node end to end (logs, DNS, Services, storage, pod start-up)
	$(WITH_CLUSTER) scripts/real-node-check

.PHONY: bench
bench: ## Throughput of streamq publish / worker vs redis-benchmark (release build)
	$(WITH_CLUSTER) cargo bench --bench throughput

.PHONY: bench-scale
bench-scale: ## The operator at 100, 300 and 1,000 Queues + Consumers: memory, CPU, apiserver writes, Redis (release build, ~20 min)
	$(WITH_CLUSTER) cargo bench --bench scale

.PHONY: bench-autoscale
bench-autoscale: ## Simulate bench/scenarios under every policy; writes docs/autoscaling.md (release build)
	scripts/bench-autoscale

.PHONY: e2e-autoscale
e2e-autoscale: ## Closed loop: the real operator and worker pods on the real node vs the simulator (~6 min)
	$(WITH_CLUSTER) cargo test --test e2e_autoscale -- --nocapture
