# One-command entry points. A fresh machine needs nothing but Python 3.10+ and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow test-all figures dashboard bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when the dependency list changes; the package itself is editable.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The default sweep (codebook scaling: three heads x bits per token), then bits vs rFID (reuses its tokenizers),
# then every figure, table and REPORT.md into paper_figs/.
# Points run two at a time (one thread each: `profile=tiny` models are too small for more), each forked from one
# process that imported the project once (launcher=local); DEMO_JOBS=1 runs them one after another.
DEMO_LAUNCHER ?= local
DEMO_JOBS ?= 2
demo: install
	$(PY) run.py -m sweep=codebook_scaling launcher=$(DEMO_LAUNCHER) hydra.sweeper.max_batch_size=$(DEMO_JOBS)
	$(PY) run.py -m sweep=bits_vs_rfid launcher=$(DEMO_LAUNCHER) hydra.sweeper.max_batch_size=$(DEMO_JOBS)
	$(PY) analysis/make_figures.py --out paper_figs

# Layers first (a lower layer importing a higher one fails the build), then the main suite; `test-all` adds the slow
# end-to-end tests, which .ci/run also runs.
test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow and not slurm and not dashboard"

test-slow: install
	$(PY) -m pytest -q -m "slow and not slurm and not dashboard"

test-all: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

figures: install
	$(PY) analysis/make_figures.py

dashboard: install
	$(PY) -m bar.orchestration.mlflow_server ui

bench: install
	$(PY) benchmarks/bench_sweep.py bits_vs_rfid
	$(PY) benchmarks/bench_sweep.py codebook_scaling
	$(PY) benchmarks/bench_heads.py

clean:
	rm -rf outputs multirun

.PHONY: slurm-up mlflow-server
# A single-node SLURM on this machine (root; Debian packages): what the `slurm` tests run against.
slurm-up:
	bash .ci/slurm_up.sh

# MLflow tracking server for many jobs (tracking=server): sqlite on local disk, artifacts under outputs/.
# HOST=0.0.0.0 to serve a cluster; PORT to move it.
HOST ?= 127.0.0.1
PORT ?= 5000
mlflow-server: install
	$(PY) -m bar.orchestration.mlflow_server serve --host $(HOST) --port $(PORT)
