# One-command entry points. A fresh machine needs nothing but Python 3.10+ and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SWEEP ?= bits_vs_rfid

.PHONY: install demo test test-all figures dashboard bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when the dependency list changes; the package itself is editable.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(PY) run.py -m sweep=$(SWEEP)
	$(PY) analysis/make_figures.py --sweep $(SWEEP)

test: install
	$(PY) -m pytest -q -m "not slow and not slurm and not dashboard"

test-all: install
	$(PY) -m pytest -q

figures: install
	$(PY) analysis/make_figures.py

dashboard: install
	$(PY) -m bar.tracking ui

bench: install
	$(PY) benchmarks/bench_bits_vs_rfid.py

clean:
	rm -rf outputs multirun
