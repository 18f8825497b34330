# Two commands for a newcomer: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint chaos demo bench bench-quick clean

$(STAMP): pyproject.toml setup.py backfill/privacy/_splice.c
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or PYTHON=python3 make ...)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench,cloud,fast]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check backfill tests benchmarks setup.py
	$(VENV)/bin/ruff format --check backfill tests benchmarks setup.py
	$(VENV)/bin/mypy

chaos: $(STAMP)
	$(PY) -m pytest -q -m chaos

demo: $(STAMP)
	$(PY) -m backfill.demo

bench: $(STAMP)
	$(PY) -m benchmarks.run

bench-quick: $(STAMP)
	BENCH_QUICK=1 $(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
