# Kakuin: `make run` serves it, `make test` checks it. Both install what is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEBIAN_PACKAGES := softhsm2 openssl haproxy postgresql wrk opensc chromium fonts-noto-cjk prometheus systemd
export KAKUIN_HOME ?= $(CURDIR)/var

.PHONY: help run test test-latest lock lint typecheck unit bench fuzz screenshots debian-packages venv clean

help:
	@echo "make run    install what is missing, initialize on first run, serve Kakuin on 127.0.0.1"
	@echo "make test   install what is missing, then ruff, mypy, import rules and the whole pytest suite"
	@echo "make test-latest  the pytest suite in .venv-latest against the newest releases of every dependency"
	@echo "make lock   re-resolve requirements/*.txt to today's newest releases (a deliberate upgrade)"
	@echo "make bench  run the benchmarks (prints tables; see docs/performance.md), about 20 minutes"
	@echo "make fuzz   fuzz every parser of foreign bytes, FUZZ_SECONDS (300) each; FUZZ_TARGET=name for one (tests/fuzz/README.md)"
	@echo "make screenshots  re-take the console screenshots in docs/console"

# Debian packages: installed only when missing, so a second run makes no network call. Their own
# services (Debian's prometheus would listen on every address, haproxy, postgresql) are not started:
# policy-rc.d says no while apt runs; Kakuin starts what it needs itself, on loopback.
debian-packages:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv python3-pip"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing (run as root, or install them)" >&2; exit 1; fi; \
	  echo "installing Debian packages:$$missing"; \
	  guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then guard=/usr/sbin/policy-rc.d; \
	    printf '#!/bin/sh\nexit 101\n' > $$guard; chmod 755 $$guard; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  status=$$?; [ -z "$$guard" ] || rm -f $$guard; exit $$status; \
	fi

# Python dependencies come from lock files with hashes (made by uv, installed by pip --require-hashes),
# never "whatever is newest today"; Kakuin itself goes in editable, without touching its dependencies.
LOCK := requirements/lock.txt
BUILD_LOCK := requirements/build.txt
UV_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --universal --python-version 3.11

$(BIN)/.installed: $(LOCK) $(BUILD_LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --require-hashes -r $(BUILD_LOCK)
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
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
	$(BIN)/pytest -q --durations=15

test: lint typecheck unit

# The same suite against the newest release of every dependency, in a venv of its own, so that an
# upgrade is tried on purpose; `make lock` then takes it.
LATEST_VENV := .venv-latest
test-latest: debian-packages
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[test]'
	$(LATEST_VENV)/bin/python -m pip list --format=freeze > $(LATEST_VENV)/versions.txt
	@echo "newest releases installed (listed in $(LATEST_VENV)/versions.txt)"
	$(LATEST_VENV)/bin/pytest -q

lock: $(BIN)/.installed
	$(UV_COMPILE) --upgrade pyproject.toml --extra test -o $(LOCK)
	$(UV_COMPILE) --upgrade requirements/build.in -o $(BUILD_LOCK)
	@git diff --stat -- requirements/ || true

# One command per benchmark; each prints its table with its peer measured in the same run.
BENCHES ?= issuance crl ocsp ra audit slow_clients
bench: venv
	@for b in $(BENCHES); do echo "== python -m bench.$$b"; $(BIN)/python -m bench.$$b || exit 1; done

# Fuzzing as long as asked (make test fuzzes each target for 1 s): the grown corpus is kept in
# tests/fuzz/work, crashing inputs go to tests/fuzz/crashes (both gitignored; tests/fuzz/README.md).
FUZZ_SECONDS ?= 300
FUZZ_TARGET ?= all
fuzz: venv
	$(BIN)/python -m tests.fuzz.run $(FUZZ_TARGET) --seconds $(FUZZ_SECONDS) --work tests/fuzz/work

# The console tests write their screenshots to a scratch directory unless asked for docs/console.
screenshots: venv
	KAKUIN_SCREENSHOTS=docs $(BIN)/pytest -q tests/console

clean:
	rm -rf $(VENV) $(LATEST_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
