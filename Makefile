# wsgauge developer entry points. Every target installs what it needs.
#   make demo     the whole thing on a local real control plane
#   make demo-sidecar   the sidecar alone, no Kubernetes (~15 s)
#   make test     lint, type-check and every test (builds the control plane once)
#   make bench    benchmarks, results in docs/benchmarks.md (includes the fleet benchmark)
#   make bench-fleet   only the fleet benchmark (FLEET_SIZES=100,1000 FLEET_ARGS=--no-multi)
#   make soak     SOAK_MINUTES (default 20) of client churn with random faults, zero-drift check
#   make unit     only the unit tests (no cluster)
#   make cluster / make cluster-down   start / stop the local cluster (control plane + real node)
#   make images   the operator, sidecar and pause images (Docker engine from Debian's packages)
#   make deploy   helm install of charts/wsgauge on the local cluster with the local images
#   make chart-test   helm lint + the chart tests (rendering, then on the local control plane)
#   make kind-node-image   the kind node image, built here (cached by version)
#   make kind-e2e the kind, chart and e2e tests on a 3-node kind cluster (KIND_KEEP=1 keeps it)
#   make kind-down   delete that kind cluster
#   make keda     KEDA built from its Go module (cached), installed on the local cluster
#   make keda-test   the KEDA e2e test (builds KEDA once; not part of make test: docs/keda.md)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LINT_DIRS := contract sidecar operator devcluster tests demo benchmarks
K8S_BIN_DIR = $(shell hack/build-k8s.sh --print-bin-dir)

.PHONY: all venv lint typecheck unit test k8s-bins node-deps browser-deps protocol-js cluster cluster-down deploy demo \
	bench clean help images chart-test kind-bins kind-node-image kind-e2e kind-down keda-bins keda keda-test

all: test

help:
	@grep -E '^#   make' Makefile | sed 's/^#   //'

# The three distributions (contract, sidecar, operator) editable, then the development project
# (devcluster, dev tools); runtime dependencies pinned by constraints.txt.
DISTRIBUTIONS := contract sidecar operator
$(STAMP): pyproject.toml $(DISTRIBUTIONS:%=%/pyproject.toml) constraints.txt VERSION sidecar/native/native_relay.c
	@echo ">>> creating virtual environment in $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# the one distribution of before (wsgauge) in an existing .venv: replaced by the four
	$(PY) -m pip uninstall --quiet --yes wsgauge 2>/dev/null || true
	$(PY) -m pip install --quiet -c constraints.txt $(DISTRIBUTIONS:%=-e ./%) -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VENV)/bin/ruff format --check $(LINT_DIRS)

# Tests import the helper modules beside them (pytest puts a test's folder on sys.path): mypy
# checks one test folder at a time with that folder first on its path (every folder's conftest.py
# is then the module `conftest`), the other test folders after it for helpers reused across them.
TEST_DIRS = $(sort $(patsubst %/,%,$(dir $(wildcard tests/*.py tests/*/*.py tests/*/*/*.py))))
EMPTY :=
SPACE := $(EMPTY) $(EMPTY)

typecheck: $(STAMP)
	$(VENV)/bin/mypy -p wsgauge_contract -p wsgauge_sidecar -p wsgauge_devcluster -p wsgauge_operator -p benchmarks
	MYPYPATH=demo $(VENV)/bin/mypy demo/*.py
	@set -e; for dir in $(TEST_DIRS); do \
	  echo "MYPYPATH=$$dir:... $(VENV)/bin/mypy $$dir/*.py"; \
	  MYPYPATH=$$dir:$(subst $(SPACE),:,$(TEST_DIRS)):demo $(VENV)/bin/mypy $$dir/*.py; \
	done

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

k8s-bins:
	@hack/build-k8s.sh >/dev/null

# Debian's Docker engine, containerd, runc, CNI plugins, iptables, debootstrap (when missing).
node-deps:
	@hack/install-node-deps.sh

# The npm packages of the protocol integration tests (tests/integration/protocols/js).
protocol-js:
	@hack/install-protocol-js.sh

# Debian's chromium for the live page's browser tests (Playwright drives it; no browser download).
browser-deps:
	@hack/install-browser-deps.sh >/dev/null

# The images are built first, so the tests run the code of this tree. The KEDA test is left to
# `make keda-test`: KEDA's first build alone takes longer than make test may grow (README).
test: lint typecheck k8s-bins images browser-deps protocol-js
	$(PY) -m pytest tests -q -ra -m "not keda"

cluster: $(STAMP) k8s-bins node-deps
	@$(VENV)/bin/wsgauge-devcluster up

cluster-down: $(STAMP)
	@$(VENV)/bin/wsgauge-devcluster down

# KEDA's operator, metrics server and admission webhooks from its Go module, cached by version
# in ~/.cache/wsgauge/keda (the first build: tens of minutes on 2 cores, progress printed).
keda-bins:
	@hack/build-keda.sh >/dev/null

# KEDA's image (on the Debian-made base) and its own manifests on the local cluster (docs/keda.md).
keda: $(STAMP) keda-bins cluster
	@$(VENV)/bin/wsgauge-devcluster keda

# The KEDA end-to-end test on the real node (tests/e2e/test_e2e_keda.py).
keda-test: $(STAMP) k8s-bins keda-bins images
	$(PY) -m pytest tests/e2e/test_e2e_keda.py -q -ra -s -m keda

# helm upgrade --install of charts/wsgauge into wsgauge-system with the local images.
deploy: cluster
	@$(VENV)/bin/wsgauge-devcluster deploy

# The whole thing on the local cluster (docs/demo.md); ends by itself, cluster kept.
demo: $(STAMP) k8s-bins images
	$(PY) demo/cluster_demo.py

# The sidecar alone, no Kubernetes: ~15 s.
.PHONY: demo-sidecar
demo-sidecar: $(STAMP)
	$(PY) demo/sidecar_demo.py

# FLEET_SIZES=100,1000 (one ConnectionStats each); FLEET_ARGS=--no-multi skips 100 CS x 100 pods.
FLEET_SIZES ?= 100,1000,10000
bench: $(STAMP)
	$(PY) -m benchmarks.run $(BENCH_ARGS)
	$(PY) -m benchmarks.fleet.bench --sizes $(FLEET_SIZES) $(FLEET_ARGS)

.PHONY: bench-fleet
bench-fleet: $(STAMP)
	$(PY) -m benchmarks.fleet.bench --sizes $(FLEET_SIZES) $(FLEET_ARGS)

# Bounded soak on the local cluster (not part of make test); result in soak/last-result.json.
SOAK_MINUTES ?= 20
.PHONY: soak
soak: $(STAMP) k8s-bins
	SOAK_MINUTES=$(SOAK_MINUTES) $(PY) -m pytest soak -q -s -p no:cacheprovider

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# --- images, chart, kind ------------------------------------------------------------------
IMAGE_REGISTRY ?= wsgauge
IMAGE_TAG ?= $(shell cat VERSION)
DOCKER ?= docker
KIND_CLUSTER ?= wsgauge-e2e
KIND_KUBECONFIG ?= $(or $(TMPDIR),/tmp)/wsgauge-$(KIND_CLUSTER).kubeconfig
KIND_KEEP ?=

define require_docker
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "make $@: Docker is missing ('$(DOCKER)' not found): install Docker to build images" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make $@: Docker is missing: the '$(DOCKER)' client is installed but no Docker engine answers (is the daemon running?)" >&2; exit 1; }
endef

# Built here from Debian's packages (nothing can be pulled): a Python base (debootstrap, made once
# and cached), the pause image, the sidecar and the operator. Starts Debian's dockerd when no
# Docker engine answers (stop it with: $(PY) -m wsgauge_devcluster.docker_engine down).
# PYTHON_IMAGE=<a local image> builds on that instead; IMAGES_ARGS=--load-into <containerd socket>.
IMAGES_ARGS ?=
images: $(STAMP)
	hack/install-node-deps.sh
	IMAGE_REGISTRY=$(IMAGE_REGISTRY) IMAGE_TAG=$(IMAGE_TAG) \
	  $(PY) -m wsgauge_devcluster.images build --print-sizes $(IMAGES_ARGS)

chart-test: $(STAMP) k8s-bins
	$(K8S_BIN_DIR)/helm lint --strict charts/wsgauge
	$(PY) -m pytest -q tests/integration/chart_render tests/unit/injector tests/integration/chart

# kind, crictl and CoreDNS from their Go modules (cached by version beside the Kubernetes build).
kind-bins:
	@hack/build-kind.sh >/dev/null

# wsgauge/kind-node:<k8s version>: the kind node image, built here from Debian's packages and our
# builds (docs/kind.md); cached, a second run returns at once.
kind-node-image: $(STAMP) k8s-bins kind-bins
	hack/install-node-deps.sh
	$(PY) -m wsgauge_devcluster.kindnode build

# A kind cluster (1 control plane, 2 workers) from that image (or KIND_NODE_IMAGE), this
# checkout's images loaded, then tests/kind, the chart tests and the e2e tests against it (the
# e2e tests that need the devcluster skip, saying why; KEDA's is left to make keda-test); the
# cluster is deleted at the end unless KIND_KEEP=1.
KIND_PY = KIND_CLUSTER=$(KIND_CLUSTER) KIND_KUBECONFIG=$(KIND_KUBECONFIG) $(PY) -m wsgauge_devcluster.kindcluster
kind-e2e: $(STAMP) k8s-bins kind-bins images browser-deps
	hack/install-node-deps.sh --kind
	$(KIND_PY) up
	$(KIND_PY) load $(IMAGE_REGISTRY)/operator:$(IMAGE_TAG) $(IMAGE_REGISTRY)/sidecar:$(IMAGE_TAG)
	$(KIND_PY) alias $(IMAGE_REGISTRY)/sidecar:$(IMAGE_TAG) $$(cat VERSION)
	status=0; KUBECONFIG=$(KIND_KUBECONFIG) KIND_KUBECONFIG=$(KIND_KUBECONFIG) WSGAUGE_KIND=1 \
	  WSGAUGE_IMAGE_REGISTRY=$(IMAGE_REGISTRY) WSGAUGE_IMAGE_TAG=$(IMAGE_TAG) PATH=$(K8S_BIN_DIR):$$PATH \
	  $(PY) -m pytest -q -ra -m "not keda" tests/kind tests/integration/chart tests/e2e || status=$$?; \
	if [ "$(KIND_KEEP)" = 1 ]; then echo ">>> kind cluster $(KIND_CLUSTER) kept (KUBECONFIG=$(KIND_KUBECONFIG)); delete it with: make kind-down"; \
	else $(KIND_PY) down; fi; exit $$status

kind-down: $(STAMP)
	$(KIND_PY) down
