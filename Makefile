# The README's two commands: `make run` (the main job) and `make test`. Both create the virtualenv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and exactly: 2.13.0 is a local CPU build on these machines; any other spec pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: run test install render lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

## make run: the whole pipeline locally on the embedded defaults, ending with a served prediction.
run: install
	MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 $(BIN)/sentimentops quickstart

## make test: the suite, offline and deterministic (tests/conftest.py sets the offline switches too).
test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 \
	  $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

render: install
	$(BIN)/sentimentops render

lint: install
	$(BIN)/ruff check steps workflows tests benchmarks

clean:
	rm -rf .sentimentops
