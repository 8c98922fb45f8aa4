# bitfactor: the two set-up commands are `make demo` and `make test` (see README.md).
# Both create .venv when missing, install the project with all extras, rebuild the C
# extension when its sources changed, and are safe to run again.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bitfactor-installed
CSRC := $(shell find runtime/csrc -name '*.[ch]' 2>/dev/null)
NATIVE_STAMP := $(VENV)/.bitfactor-native

.PHONY: install build demo test lint format bench fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[engine,dev]'
	@touch $@ $(NATIVE_STAMP)

# The editable install builds runtime._native in place; rebuild it when a C file changes.
$(NATIVE_STAMP): $(STAMP) $(CSRC)
	$(PY) setup.py --quiet build_ext --inplace --force
	@touch $@

build: $(NATIVE_STAMP)

demo: build
	$(VENV)/bin/bitfactor demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: build lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: build
	$(PY) bench/runtime.py

# 100 000 mutated .bfm files against an ASan+UBSan build made aside (docs/development.md)
fuzz: $(STAMP)
	$(PY) tests/fuzz/fuzz_bfm.py --count $(or $(FUZZ_INPUTS),100000)

clean:
	rm -rf build runtime/*.so .pytest_cache .mypy_cache .ruff_cache
