# One-command entry points. A fresh machine needs nothing but Python 3.10+ and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test check test-cli test-compile test-slow test-faults test-all figures dashboard bench clean

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

# Static checks first (import contracts, ruff, mypy), then the in-process tests. The other tiers (CLI processes,
# torch.compile, long end-to-end runs, faults) run from .ci/run; `make test-all` runs every tier here.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --durations=15
IN_PROCESS := not cli and not compile and not slow and not faults and not slurm and not dashboard and not load

test: install check
	$(PYTEST) -m "$(IN_PROCESS)"

check: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check bar analysis hydra_plugins run.py
	$(VENV)/bin/mypy

test-cli: install
	$(PYTEST) -m "cli and not slow and not slurm and not dashboard"

test-compile: install
	$(PYTEST) -m "compile and not slow"

test-slow: install
	$(PYTEST) -m "slow and not slurm and not dashboard"

test-faults: install
	$(PYTEST) -m "faults"

test-all: test test-cli test-compile test-slow test-faults

figures: install
	$(PY) analysis/make_figures.py

# The MLflow UI on the default store (MLFLOW_TRACKING_URI, else outputs/mlflow.db); PORT=N when 5000 is taken.
dashboard: install
	$(PY) -m bar.orchestration.mlflow_server ui --host $(HOST) --port $(PORT)

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
