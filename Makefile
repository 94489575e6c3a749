# ssamba: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.DEFAULT_GOAL := help

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## .*$$' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

LOCK := requirements/dev.txt

# Exactly the lock's versions, nothing resolved at install time (--no-deps); the project itself is
# built with the lock's setuptools (--no-build-isolation), so nothing published later enters.
# the lock is for CPython 3.11: another version is named before a venv is made
$(STAMP): setup.cfg pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
		echo "error: the lock (requirements/dev.txt) is for Python 3.11 but $(PYTHON) is $$($(PYTHON) -V 2>&1); run make PYTHON=python3.11 ..." >&2; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the lock (requirements/dev.txt) and the project

# the suite in TEST_JOBS processes (pytest-xdist); the SLURM tests share one node, so one process
# takes them all (--dist loadgroup, their xdist_group). TEST_JOBS=0: one process, as plain pytest
TEST_JOBS ?= 2
test: $(STAMP) ## run the test suite in TEST_JOBS processes (2; GPU tests skip without CUDA)
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadgroup

lint: $(STAMP) ## ruff check and format check
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m ruff format --check src tests benchmarks scripts

format: $(STAMP) ## ruff format and autofix
	$(PY) -m ruff format src tests benchmarks scripts
	$(PY) -m ruff check --fix src tests benchmarks scripts

# pip-tools reads setup.cfg as it is; LOCK_FLAGS=--upgrade moves every pin to the newest its range allows
PIP_TOOLS := pip-tools==7.7.0
LOCK_FLAGS ?=
lock: ## regenerate the lock from setup.cfg and requirements/torch-pair.in (LOCK_FLAGS=--upgrade to move pins)
	@test -x $(VENV)-lock/bin/python || $(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install --quiet $(PIP_TOOLS)
	$(VENV)-lock/bin/pip-compile --quiet --extra dev --allow-unsafe --strip-extras --no-emit-index-url \
		--no-emit-find-links $(LOCK_FLAGS) -c requirements/torch-pair.in -o $(LOCK) setup.cfg
	$(VENV)-lock/bin/python -m scripts.lock seal $(LOCK) setup.cfg

# setup.cfg's ranges at their newest, in a throwaway venv; PIP_CONSTRAINT=/dev/null lifts a machine-wide
# pip cap (this project's CPU machines cap torch at the release they keep on disk)
test-latest: ## throwaway venv (.venv-latest) with setup.cfg's newest releases; runs the fast tests
	rm -rf $(VENV)-latest
	$(PYTHON) -m venv $(VENV)-latest
	PIP_CONSTRAINT=/dev/null $(VENV)-latest/bin/python -m pip install --quiet -e ".[dev]"
	$(VENV)-latest/bin/python -m pip freeze --exclude-editable > $(VENV)-latest/freeze.txt
	$(VENV)-latest/bin/python -m pytest -m "not slow and not slurm and not gpu" -p no:cacheprovider

clean: ## remove caches and build files (keeps .venv, data/ and logs/)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +

clean-logs: ## remove everything under logs/
	rm -rf logs/*
	@touch logs/.gitkeep

.PHONY: help install test lint format lock test-latest clean clean-logs

# ---- the embedded demo: synthetic keywords + unlabelled phrases, pretrain then fine-tune ----------
DEMO := data/demo
# the newest finished pretraining's export (src/utils/runs.py); PRETRAINED=<run>/encoder picks another
PRETRAINED ?= $(shell $(PY) -m src.utils.runs latest-encoder logs/pretrain/runs 2>/dev/null)

$(DEMO)/.ready: $(STAMP)
	$(PY) -m src.data.demo --out $(DEMO)
	$(PY) -m src.data.prepare speechcommands --task ks2 --root $(DEMO)/speech_commands --out $(DEMO)/prepared/speechcommands-ks2
	$(PY) -m src.data.prepare librispeech --root $(DEMO)/librispeech --out $(DEMO)/prepared/librispeech
	$(PY) -m src.data.shards build --manifest $(DEMO)/prepared/librispeech/manifest.jsonl --out $(DEMO)/features/librispeech --target-length 400
	$(PY) -m src.data.shards build --manifest $(DEMO)/prepared/speechcommands-ks2/manifest.jsonl --out $(DEMO)/features/speechcommands-ks2 --target-length 128
	@touch $@

demo: $(DEMO)/.ready ## build and prepare the demo corpus (data/demo; under a minute on 2 cores)

pretrain: $(DEMO)/.ready ## pretrain a small SSAMBA on the demo corpus (~22 min on 2 cores; ARGS=... for overrides)
	$(PY) -m src.train experiment=pretrain_demo $(ARGS)

finetune: $(DEMO)/.ready ## fine-tune the demo keyword spotter from the newest finished `make pretrain` (PRETRAINED=... for another)
	@test -n "$(PRETRAINED)" || { $(PY) -m src.utils.runs latest-encoder logs/pretrain/runs; exit 2; }
	@echo "fine-tuning from $(PRETRAINED) (PRETRAINED=<run>/encoder picks another; finished runs: ls logs/pretrain/runs/*/metrics.json)"
	$(PY) -m src.train experiment=ks2_demo model.pretrained=$(PRETRAINED) $(ARGS)

.PHONY: demo pretrain finetune
