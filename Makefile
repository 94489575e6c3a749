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
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m ruff format --check src tests benchmarks scripts

format: $(STAMP) ## ruff format and autofix
	$(PY) -m ruff format src tests benchmarks scripts
	$(PY) -m ruff check --fix src tests benchmarks scripts

clean: ## remove caches and build files (keeps .venv, data/ and logs/)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +

clean-logs: ## remove everything under logs/
	rm -rf logs/*
	@touch logs/.gitkeep

.PHONY: help install test lint format clean clean-logs

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
	$(PY) src/train.py experiment=pretrain_demo $(ARGS)

finetune: $(DEMO)/.ready ## fine-tune the demo keyword spotter from the newest finished `make pretrain` (PRETRAINED=... for another)
	@test -n "$(PRETRAINED)" || { $(PY) -m src.utils.runs latest-encoder logs/pretrain/runs; exit 2; }
	@echo "fine-tuning from $(PRETRAINED) (PRETRAINED=<run>/encoder picks another; finished runs: ls logs/pretrain/runs/*/metrics.json)"
	$(PY) src/train.py experiment=ks2_demo model.pretrained=$(PRETRAINED) $(ARGS)

.PHONY: demo pretrain finetune
