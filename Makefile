# hostproxy — every entry point installs what it needs first, so each works on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the tests and the benchmark talk to (real clients and servers, never mocks).
APT_PKGS := curl nginx haproxy wrk nghttp2-client dnsmasq chromium
CONFIG ?= configs/local.yaml

.PHONY: install apt bytecode run test bench lint fmt clean

install: $(STAMP) apt

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# apt only when something is missing; services are not started by the packages (policy-rc.d),
# the tests start the servers they need on loopback ports.
apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi; \
	  printf '#!/bin/sh\nexit 101\n' | $$SUDO tee /usr/sbin/policy-rc.d >/dev/null; $$SUDO chmod +x /usr/sbin/policy-rc.d; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  rc=$$?; $$SUDO rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

# Bytecode for the project's own modules (the venv's packages got theirs from pip), written even where
# PYTHONDONTWRITEBYTECODE is set, so that no daemon start pays for compiling them: about 0.1 s of the
# first proxied response, which `make bench` measures. Incremental: only changed files are compiled.
bytecode: install
	$(PY) -m compileall -q dtab namers hostproxy

run: bytecode
	$(VENV)/bin/hostproxy run $(CONFIG)

test: bytecode
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: bytecode
	$(PY) -m hostproxy.bench $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check dtab namers hostproxy tests
	$(VENV)/bin/ruff format --check dtab namers hostproxy tests
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff format dtab namers hostproxy tests
	$(VENV)/bin/ruff check --fix dtab namers hostproxy tests

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache
