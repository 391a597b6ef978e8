# Two commands do everything: `make demo` and `make test` (see README.md).
# Each trainer gets its own pinned virtual environment (requirements/*.lock); both are built on first use.
SHELL := /bin/bash
PYTHON ?= python3
LF_VENV := .venv-llamafactory
SWIFT_VENV := .venv-swift
LF_PY := $(LF_VENV)/bin/python
SWIFT_PY := $(SWIFT_VENV)/bin/python
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: install demo test test-quick lock tiny-models synthetic-data bench-converters gpu-wheels bench-gpu forgery-proof clean help

help:
	@echo "make demo   tiny models + synthetic tasks, convert, train with LLaMA-Factory and ms-swift, eval base/tuned/baseline, report"
	@echo "make test   run the test suite (installs the environments first if needed)"
	@echo "make test-quick          the tests not marked slow (no trainer runs, no learning runs, no e2e): the inner loop"
	@echo "make lock   re-resolve requirements/*.txt into requirements/*.lock"
	@echo "make synthetic-data      sample inputs of all four tasks, in their real source formats, under data/synthetic"
	@echo "make bench-converters    converter records/s on a generated 400k-caption COCO json"
	@echo "make forgery-proof       the longer CPU learning proof of forgery modes T1/T3 (AUROC on synthetic splices)"
	@echo "make gpu-wheels          download the trainers' wheels a bare GPU machine lacks into .whl/"
	@echo "make bench-gpu MODEL=qwen2_5_vl_7b OUT=dir [VARIANTS=...] [PROFILE=2]   (on the GPU machine; docs/performance.md)"

install: $(LF_VENV)/.project-installed $(SWIFT_VENV)/.project-installed

# A venv is rebuilt when its lock changes; the stamp is written last, so an interrupted install is redone.
$(LF_VENV)/.installed: requirements/llamafactory.lock
	@test -x $(LF_PY) || $(PYTHON) -m venv $(LF_VENV)
	$(LF_PY) -m pip install $(PIP_FLAGS) -r $<
	@touch $@

$(SWIFT_VENV)/.installed: requirements/swift.lock
	@test -x $(SWIFT_PY) || $(PYTHON) -m venv $(SWIFT_VENV)
	$(SWIFT_PY) -m pip install $(PIP_FLAGS) -r $<
	@touch $@

# The project itself, editable (the checkout's code, no copy) in each environment: the trainers' own commands
# and the console scripts import it from any directory. --no-build-isolation builds with the environment's
# own setuptools (no download); redone when pyproject.toml (packages, console scripts) changes.
%/.project-installed: %/.installed pyproject.toml
	$*/bin/python -m pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .
	@touch $@

demo: install
	$(LF_PY) -m tools.demo --out reports/demo

test: install
	$(LF_PY) -m pytest -q --durations=25 tests

test-quick: install
	$(LF_PY) -m pytest -q -m "not slow" tests

tiny-models: $(LF_VENV)/.installed
	$(LF_PY) -m tools.tiny_models --out .cache/tiny-models

synthetic-data: $(LF_VENV)/.installed
	$(LF_PY) -m tools.synthetic_data all --out data/synthetic

bench-converters: $(LF_VENV)/.installed
	$(LF_PY) -m tools.bench_converters

forgery-proof: tiny-models
	$(LF_PY) -m tools.forgery_proof --model .cache/tiny-models/qwen2_5_vl --out reports/forgery_proof --n 128 --epochs 10

gpu-wheels:
	tools/prepare_gpu_wheels.sh

# Runs on a GPU machine with its own torch: it installs the carried wheels itself, so it needs no `install`.
bench-gpu:
	PYTHONUNBUFFERED=1 python3 -m tools.bench run --model $(MODEL) --out $(OUT) --wheels .whl $(if $(VARIANTS),--variants $(VARIANTS)) $(if $(PROFILE),--profile $(PROFILE))

# Resolve the human-edited pins into full locks (every transitive package pinned).
lock:
	rm -rf .cache/lock-venv && $(PYTHON) -m venv .cache/lock-venv
	.cache/lock-venv/bin/pip install $(PIP_FLAGS) -r requirements/llamafactory.txt
	.cache/lock-venv/bin/pip freeze --exclude-editable | sort -f > requirements/llamafactory.lock
	rm -rf .cache/lock-venv && $(PYTHON) -m venv .cache/lock-venv
	.cache/lock-venv/bin/pip install $(PIP_FLAGS) -r requirements/swift.txt
	.cache/lock-venv/bin/pip freeze --exclude-editable | sort -f > requirements/swift.lock
	rm -rf .cache/lock-venv

clean:
	rm -rf $(LF_VENV) $(SWIFT_VENV) .cache reports outputs
