# Kakuin: `make run` serves it, `make test` checks it. Both install what is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEBIAN_PACKAGES := softhsm2 openssl postgresql wrk opensc chromium fonts-noto-cjk
export KAKUIN_HOME ?= $(CURDIR)/var

.PHONY: help run test lint typecheck unit bench screenshots debian-packages venv clean

help:
	@echo "make run    install what is missing, initialize on first run, serve Kakuin on 127.0.0.1"
	@echo "make test   install what is missing, then ruff, mypy, import rules and the whole pytest suite"
	@echo "make bench  run the benchmarks (prints tables; see docs/performance.md), about 20 minutes"
	@echo "make screenshots  re-take the console screenshots in docs/console"

# Debian packages: installed only when missing, so a second run makes no network call.
debian-packages:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv python3-pip"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing (run as root, or install them)" >&2; exit 1; fi; \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

venv: debian-packages $(BIN)/.installed

run: venv
	$(BIN)/kakuin up

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q

test: lint typecheck unit

# One command per benchmark; each prints its table with its peer measured in the same run.
BENCHES ?= issuance crl ocsp ra
bench: venv
	@for b in $(BENCHES); do echo "== python -m bench.$$b"; $(BIN)/python -m bench.$$b || exit 1; done

# The console tests write their screenshots to a scratch directory unless asked for docs/console.
screenshots: venv
	KAKUIN_SCREENSHOTS=docs $(BIN)/pytest -q tests/console

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
