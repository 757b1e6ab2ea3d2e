# framer: every set-up and run step. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default (a local wheel on the project machines). For CUDA see README "Installing a CUDA build".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST := $(PY) -m pytest
SMOKE ?= 0

.DEFAULT_GOAL := help
.PHONY: help venv test test-slow test-all test-ddp lint format demo bench gpu-check reproduce-table sweep-smoke clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[dev]'
	$(PY) -m pip install --no-deps matbench==0.6
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP) ## create .venv with pinned CPU torch and every dependency (idempotent)

test: venv ## the default test suite (no slow or GPU tests; under 20 minutes on 2 cores)
	$(PYTEST) -m "not slow and not gpu"

test-slow: venv ## only the slow tests (DDP with gloo, multi-process sweeps, pre-emption)
	$(PYTEST) -m "slow and not gpu"

test-all: venv ## every test that can run on this machine
	$(PYTEST)

lint: venv ## ruff lint and format check
	$(VENV)/bin/ruff check framer tests bench
	$(VENV)/bin/ruff format --check framer tests bench

format: venv ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix framer tests bench
	$(VENV)/bin/ruff format framer tests bench

demo: venv ## small Crystalformer and CrystalFramer on the embedded Ewald data via the CLI (CPU) -> runs/demo/summary.json
	$(PY) -m framer.demo

bench: BENCH_ARGS ?= --threads 1 --rounds 3
bench: venv ## speed and memory benchmarks (~20-30 min; BENCH_ARGS="--quick" or "--against REV") -> bench/results/<host>.{json,md,png}
	$(PY) -m bench.speed $(BENCH_ARGS)

# The GPU check runs from the checkout with no install step: the .venv's Python when there is one, else $(PYTHON).
GPU_CHECK_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check: DEVICE ?= cuda
gpu-check: ## GPU readiness, <= 8 min on one H100 (DEVICE=cpu QUICK=1: tiny, any CPU) -> bench/results/<host>-gpu*.{json,md}
	PYTHONPATH=. $(GPU_CHECK_PY) -m bench.gpu_check --device $(DEVICE) $(if $(filter 1,$(QUICK)),--quick,) $(GPU_CHECK_ARGS)

reproduce-table: RUNS ?= $(if $(filter 1,$(SMOKE)),runs/smoke,runs/paper)
reproduce-table: RESULTS ?= $(if $(filter 1,$(SMOKE)),results/smoke,results)
reproduce-table: venv ## run every cell of the paper's table (SMOKE=1: embedded data, minutes) and write results/
	$(PY) -m framer.reproduce $(if $(filter 1,$(SMOKE)),--smoke,) --runs-dir $(RUNS) $(REPRODUCE_ARGS)
	$(PY) -m framer.report --runs $(RUNS) --out $(RESULTS)
	$(PY) -m framer.ensemble --runs $(RUNS) --out $(RESULTS)

.PHONY: sweep
sweep: venv ## Optuna study: make sweep SWEEP=sweeps/frames.yaml [STORAGE=postgresql://...] [N_TRIALS=n] [DEVICES=n]
	$(PY) -m framer.tune --sweep $(or $(SWEEP),sweeps/frames.yaml) $(if $(STORAGE),--storage $(STORAGE),) \
		$(if $(N_TRIALS),--n-trials $(N_TRIALS),) $(if $(DEVICES),--devices-per-trial $(DEVICES),)

sweep-smoke: venv ## a 3-trial study on the embedded data (CPU, minutes) -> sweeps/smoke/
	$(PY) -m framer.tune --sweep sweeps/smoke.yaml

clean: ## remove caches of Python and pytest (keeps data, runs and .venv)
	rm -rf .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
