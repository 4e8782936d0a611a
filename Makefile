# The two entry points for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit deps venv bench fuzz clean

demo: deps $(STAMP)
	$(PY) -m vsc.demo

test: deps $(STAMP) lint typecheck
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

deps:
	@scripts/install-system-deps.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

bench: deps $(STAMP)
	$(PY) -m benchmarks

# A long campaign; CI runs a short one inside `make test` (tests/test_fuzz.py).
FUZZ_ARGS ?= --iterations 1000000 --progress 300
fuzz: $(STAMP)
	$(PY) -m vsc.fuzz $(FUZZ_ARGS) --crash-dir fuzz-crashes

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
