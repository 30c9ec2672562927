# hostproxy — every entry point installs what it needs first, so each works on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The interpreter the venv is made from: the distribution's /usr/bin/python3 when it is 3.11 or newer
# and can make venvs, else the first python3 on PATH. Debian builds its python3 with profile-guided
# and link-time optimisation and links libpython statically; a plain source build of the same
# version (pyenv's, for one) costs about 10% more CPU per proxied request (see the README's
# Performance section). Give PYTHON=... to choose another; the venv is made again when it changes.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in /usr/bin/python3 python3; do \
  if $$p -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
  command -v $$p; break; fi; done)
endif
# Which interpreter the venv was made from (its real path).
INTERPRETER := $(VENV)/.interpreter
# Debian packages the tests and the benchmark talk to (real clients and servers, never mocks).
APT_PKGS := curl nginx haproxy wrk nghttp2-client dnsmasq chromium slowhttptest valgrind prometheus
CONFIG ?= configs/local.yaml

.PHONY: install apt interpreter bytecode run test bench lint fmt clean

install: interpreter $(STAMP) apt

# A venv made from another interpreter than $(PYTHON) (or from an unknown one) is made again.
interpreter:
	@test -n "$(PYTHON)" || { echo "no python3 of version 3.11 or newer with venv and ensurepip found; give PYTHON=/path/to/python3"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "$(PYTHON) is not Python 3.11 or newer; give PYTHON=/path/to/python3"; exit 1; }
	@want="$$(readlink -f "$$(command -v $(PYTHON))")"; have="$$(cat $(INTERPRETER) 2>/dev/null)"; \
	if [ "$$want" != "$$have" ]; then \
	  if [ -d $(VENV) ]; then echo "the venv was made from $${have:-an unknown interpreter}; making it again from $$want"; rm -rf $(VENV); fi; \
	  $(PYTHON) -m venv $(VENV) && echo "$$want" > $(INTERPRETER); \
	fi

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
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
