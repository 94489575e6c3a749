# ssamba: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.DEFAULT_GOAL := help

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## .*$$' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its dev extras

test: $(STAMP) ## run the test suite (GPU tests skip without CUDA)
	$(PY) -m pytest

lint: $(STAMP) ## ruff check and format check
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

format: $(STAMP) ## ruff format and autofix
	$(PY) -m ruff format src tests benchmarks
	$(PY) -m ruff check --fix src tests benchmarks

clean: ## remove caches and build files (keeps .venv, data/ and logs/)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +

clean-logs: ## remove everything under logs/
	rm -rf logs/*
	@touch logs/.gitkeep

.PHONY: help install test lint format clean clean-logs
