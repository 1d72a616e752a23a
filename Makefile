# Oakestra Net (Python): one Makefile for setup, tests, the local cluster and benchmarks.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := mosquitto mosquitto-clients iptables iproute2 iperf3 nftables conntrack
COMPONENTS := shared root-service-manager cluster-service-manager net-manager
PYTEST_ARGS ?=
# Tests mostly wait (sockets, brokers, kernel, clusters settling), so every tier but compose
# runs on two pytest-xdist workers; the system tier hands out whole modules (one cluster per
# module and data-plane mode lives in one worker). XDIST= turns it off.
XDIST ?= -n 2
SYSTEM_XDIST := $(if $(strip $(XDIST)),$(XDIST) --dist loadscope,)

.PHONY: help setup apt venv lint format test test-pure test-process test-kernel test-system test-mongo test-compose test-chaos run bench bench-rules bench-control clean

help:
	@echo "make setup   install system packages (apt) and the dev virtualenv (.venv)"
	@echo "make test    setup, lint, then every test tier (pure, process, kernel, system, mongo, compose)"
	@echo "make test-pure / test-process / test-kernel / test-system / test-mongo / test-compose   one tier"
	@echo "make lint    ruff check + ruff format --check + mypy on the pure core"
	@echo "make run     local cluster in network namespaces with a demo app (needs root)"
	@echo "make bench   data-path benchmark vs the direct kernel path (needs root)"
	@echo "make bench-rules    per-packet cost of each nft rule of the kernel fast path (ablation)"
	@echo "make bench-control  control-plane benchmark: 1,000 MQTT nodes, root, cluster (table)"
	@echo "make test-mongo     the store tests again against SecantusDB (MongoDB wire protocol)"
	@echo "make test-chaos      the chaos test again, 75 s with a random seed (make test runs 45 s, fixed seed)"
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

# Test tiers (testsupport/tiers.py): pure = no marker (one process, no sockets, enforced),
# process = real broker / servers / subprocesses, kernel = root + own namespaces,
# system = several of our processes together. A new tier (e.g. mongo, compose): its marker
# in pyproject.toml and in testsupport/tiers.py TIERS, a test-<tier> target below,
# "and not <tier>" in the other targets' -m, and its target added to TIERS here.
TIERS := test-pure test-process test-kernel test-system test-mongo test-compose
test: setup lint $(TIERS)

# pytest exits 5 when a tier has no tests yet; that is not a failure.
test-pure: venv
	$(VENV)/bin/pytest $(XDIST) -m "not process and not kernel and not system and not compose" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-process: venv
	$(VENV)/bin/pytest $(XDIST) -m "process and not kernel and not system and not compose" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-kernel: venv
	$(VENV)/bin/pytest $(XDIST) -m "kernel and not system and not compose" $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Every system test runs against both data-plane backends (tun, kernel; integration-tests/
# conftest.py). The chaos test runs here for 45 s per backend with a fixed seed (the one
# that found the last bug it found); `make test-chaos` runs it longer with a random seed.
test-system: venv
	CHAOS_SEED=$${CHAOS_SEED:-525562697} CHAOS_SECONDS=$${CHAOS_SECONDS:-45} \
	  $(VENV)/bin/pytest $(SYSTEM_XDIST) -m "system and not compose" $(PYTEST_ARGS) || [ $$? -eq 5 ]

# docker-compose.yml in a Docker engine of its own (in its own network namespace), with
# stand-in images built offline; skips with the reason (-rs) when Docker cannot run here.
# Expensive artefacts are cached in .cache/compose.
test-compose: venv
	$(VENV)/bin/pytest -m "compose" -rs integration-tests/compose $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Every test that touches the store, against a SecantusDB the tier starts (testsupport/mongo.py;
# one server per xdist worker).
test-mongo: venv
	$(VENV)/bin/pytest $(XDIST) --mongo -m "store and not kernel and not compose" $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The seeded chaos test (CHAOS_SEED, CHAOS_SECONDS; default a random seed and 75 s): kills
# and restarts every component under a workload (docs/ARCHITECTURE.md).
test-chaos: venv
	$(VENV)/bin/pytest -m chaos -s $(PYTEST_ARGS)

run: setup
	PYTHONPATH=integration-tests $(PY) -m testbed.run

bench: setup
	PYTHONPATH=integration-tests $(PY) -m testbed.bench

# What each nft rule of the kernel fast path costs per UDP packet (variants vs direct, same run)
bench-rules: setup
	PYTHONPATH=integration-tests $(PY) -m testbed.bench_rules --saturate --vxlan $(BENCH_ARGS)

# BENCH_ARGS: e.g. --quick, --store embedded, --root-services 2000
bench-control: setup
	PYTHONPATH=integration-tests $(PY) -m testbed.control_bench $(BENCH_ARGS)

clean:
	-test -x $(PY) && PYTHONPATH=integration-tests $(PY) -m testbed.sweep || true
	rm -rf $(VENV) .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
