# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv, install torch first (so pip does not pull a multi-GB CUDA build where a CPU
# wheel is intended; override with TORCH="torch==X.Y.Z" or TORCH="" to keep what you have), then
# the package with its extras.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test test-slow bench bench-checkpoint clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if [ -n "$(TORCH)" ]; then $(PY) -m pip install --quiet "$(TORCH)"; fi
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/vjepa-adapt demo

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# One table of figures and ratios measured in the same run, also written to bench/results.json.
# The single-topic scripts (bench/bench_*.py) still run by themselves; bench_checkpoint.py (6 GB RAM,
# writes 4.8 GB) is opt-in: `make bench-checkpoint`.
bench: install
	$(PY) bench/bench_all.py

bench-checkpoint: install
	$(PY) bench/bench_checkpoint.py --compare-bytes

clean:
	rm -rf $(VENV) runs .pytest_cache
