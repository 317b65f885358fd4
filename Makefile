# wsgauge developer entry points. Every target installs what it needs.
#   make demo     the whole thing on a local real control plane
#   make test     lint, type-check and every test (builds the control plane once)
#   make bench    benchmarks, results in docs/benchmarks.md
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
K8S_BIN_DIR = $(shell hack/build-k8s.sh --print-bin-dir)

.PHONY: all venv lint typecheck unit test k8s-bins cluster cluster-down demo bench clean help

all: test

help:
	@grep -E '^#   make' Makefile | sed 's/^#   //'

$(STAMP): pyproject.toml
	@echo ">>> creating virtual environment in $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check contract sidecar operator devcluster tests
	$(VENV)/bin/ruff format --check contract sidecar operator devcluster tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy -p wsgauge_contract -p wsgauge_sidecar -p wsgauge_devcluster $(if $(wildcard operator/wsgauge_operator/*.py),-p wsgauge_operator)

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

k8s-bins:
	@hack/build-k8s.sh >/dev/null

test: lint typecheck k8s-bins
	$(PY) -m pytest tests -q -ra

cluster: $(STAMP) k8s-bins
	@$(VENV)/bin/wsgauge-devcluster up

cluster-down: $(STAMP)
	@$(VENV)/bin/wsgauge-devcluster down

demo: $(STAMP) k8s-bins
	$(PY) -m wsgauge_devcluster.demo

bench: $(STAMP)
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
