# Two commands for a new machine: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Chalice sets the Lambda runtime from the packaging interpreter, and python3.11 functions can
# no longer be created: insist on Python >= 3.12 (.python-version selects 3.13.0 under pyenv).
FIND_PYTHON := for p in python3 python3.13 python3.12; do \
	  if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	    command -v $$p; break; fi; done

# This machine's pip config lists local mirror folders that do not exist; pip warns about each.
QUIET_PIP := { grep -v "^WARNING: Location 'file:" || true; }

.PHONY: help setup demo test lint browser sandbox bench bench-memory faults clean

help:
	@echo "make demo     set up .venv, then run the end-to-end demo on the local sandbox"
	@echo "make test     set up .venv, then lint (ruff, mypy) and run the whole test suite"
	@echo "make lint     ruff check, ruff format --check and mypy only"
	@echo "make browser  install Debian's chromium for the link page test, when missing and root"
	@echo "make sandbox  start the DirectLink sandbox + AWS emulator; writes .vifgate-sandbox.env to source"
	@echo "make bench    time a poll cycle over 8 targets, sequential vs concurrent"
	@echo "make bench-memory  peak memory and CPU of a cycle over 10/100/200 targets, old vs current"
	@echo "make faults   kill the poller at four points of a confirm, break answers; count what survives"
	@echo "make clean    remove .venv and caches"

$(STAMP): pyproject.toml requirements.txt
	@py="$$($(FIND_PYTHON))"; \
	if [ -z "$$py" ]; then \
	  echo "error: VIF Gatekeeper needs Python >= 3.12 (Lambda no longer accepts python3.11)." >&2; \
	  echo "       Install 3.13 (e.g. 'pyenv install 3.13.0'; .python-version selects it) and rerun." >&2; \
	  exit 1; fi; \
	echo "Setting up $(VENV) with $$py ($$($$py --version))"; \
	rm -rf $(VENV) && $$py -m venv $(VENV) && \
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | $(QUIET_PIP) && \
	$(PY) -m pip install --quiet -e '.[dev]' 2>&1 | $(QUIET_PIP)
	@touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vifgate demo

test: lint $(STAMP) browser
	$(PY) -m pytest -n 2 -q

# The link page test drives Debian's chromium (a test tool's own browser download is not possible
# here). CI starts as root on a clean machine: install it there; elsewhere say once why the test skips.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "note: $(CHROMIUM) is missing and cannot be installed here (needs root and apt-get): the browser test will skip"; \
	  exit 0; fi; \
	echo "Installing Debian's chromium for the link page test (apt-get)"; \
	log=$$(mktemp); export DEBIAN_FRONTEND=noninteractive; \
	if apt-get install -y -q --no-install-recommends chromium >"$$log" 2>&1 || \
	   { apt-get update -q >>"$$log" 2>&1 && apt-get install -y -q --no-install-recommends chromium >>"$$log" 2>&1; }; then \
	  echo "Installed $$($(CHROMIUM) --version 2>/dev/null)"; \
	else \
	  tail -n 5 "$$log"; echo "note: apt-get could not install chromium: the browser test will skip"; \
	fi; rm -f "$$log"

# Lint, format and types first: a minute of pytest is wasted on code that does not pass them.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

sandbox: $(STAMP)
	$(VENV)/bin/vifgate sandbox

faults: $(STAMP)
	$(PY) bench/fault_run.py

bench: $(STAMP)
	$(PY) bench/poll_cycle.py

bench-memory: $(STAMP)
	$(PY) bench/memory.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
