# The two commands of this repo: `make reproduce` and `make test` (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PY := .venv/bin/python
# Re-installing costs seconds: the stamp is keyed on pyproject.toml's content.
STAMP := .venv/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PIP_QUIET := 2>&1 | { grep -v "is ignored: it is neither" || true; }

.PHONY: reproduce test setup data report exercises clean-smoke help

help:
	@echo "make reproduce   # generate the synthetic world, run every notebook (full), write results/ and figures/"
	@echo "make test        # unit tests + every notebook in SMOKE mode"

$(PY):
	python3 -m venv .venv

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip $(PIP_QUIET)
	$(PY) -m pip install -q -e '.[dev]' $(PIP_QUIET)
	$(PY) -m ipykernel install --user --name pixelllm --display-name "Python (pixelllm .venv)" >/dev/null
	rm -f .venv/.installed-*
	touch $@

setup: $(STAMP)

# FORCE=1 make data  replaces an existing world (make_synthetic refuses a non-empty --out otherwise).
data: setup
	$(PY) -m data_prep.make_synthetic --out runs/full/data $(if $(filter-out 0,$(FORCE)),--overwrite)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

# FORCE=1 make reproduce  recomputes artifacts that already exist (data, pretrained parts, checkpoints).
# Notebook 09 evaluates PixelLM stages trained just before it (the recipe of record, 9,600 steps, and its
# ablation arms: about 55 minutes on a 2-core CPU, two stages at a time).
reproduce: setup
	$(PY) -m pixelllm.notebooks --mode full --only 01 02 03 04 05 06 07 08
	$(PY) -m pixelllm.train --config pixellm --ablations --jobs 2
	$(PY) -m pixelllm.notebooks --mode full --only 09 10 11
	$(PY) bench/trace_overhead.py
	$(PY) bench/synthetic_speed.py
	$(PY) bench/visual_reliance.py
	$(PY) bench/train_throughput.py
	$(PY) -m pixelllm.report

report: setup
	$(PY) -m pixelllm.report

# student versions of the notebooks (solutions removed, nbgrader's format) → exercises/ (not committed)
exercises: setup
	$(PY) -m pixelllm.exercises --out exercises

clean-smoke:
	rm -rf runs/smoke
