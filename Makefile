# Oakestra Net (Python): one Makefile for setup, tests, the local cluster and benchmarks.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := mosquitto mosquitto-clients iptables iproute2 iperf3 nftables conntrack
COMPONENTS := shared root-service-manager cluster-service-manager net-manager
PYTEST_ARGS ?=

.PHONY: help setup apt venv lint format test test-pure test-kernel test-system run bench clean

help:
	@echo "make setup   install system packages (apt) and the dev virtualenv (.venv)"
	@echo "make test    setup, lint, then every test tier (pure, kernel, system)"
	@echo "make lint    ruff check + ruff format --check + mypy on the pure core"
	@echo "make run     local cluster in network namespaces with a demo app (needs root)"
	@echo "make bench   data-path benchmark vs the direct kernel path (needs root)"
	@echo "make clean   remove everything make run / tests left behind, and the venv"

setup: apt venv

# apt-get update runs once, and only when a package is missing.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.stamp

$(VENV)/.stamp: requirements-dev.txt $(foreach c,$(COMPONENTS),$(c)/pyproject.toml)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	# only for its Compose file JSON schema (static check of docker-compose.yml)
	$(PIP) install -q --no-deps docker-compose==1.29.2
	$(PIP) install -q --no-deps $(foreach c,$(COMPONENTS),-e ./$(c))
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: setup lint test-pure test-kernel test-system

# pytest exits 5 when a tier has no tests yet; that is not a failure.
test-pure: venv
	$(VENV)/bin/pytest -m "not kernel and not system" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-kernel: venv
	$(VENV)/bin/pytest -m "kernel and not system" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-system: venv
	$(VENV)/bin/pytest -m "system" $(PYTEST_ARGS) || [ $$? -eq 5 ]

run: setup
	PYTHONPATH=integration-tests $(PY) -m testbed.run

bench: setup
	PYTHONPATH=integration-tests $(PY) -m testbed.bench

clean:
	-test -x $(PY) && PYTHONPATH=integration-tests $(PY) -m testbed.sweep || true
	rm -rf $(VENV) .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
