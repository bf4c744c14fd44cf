# Two entry points: `make demo` (the default study) and `make test` (the test suite).
# Both create .venv and install what they need; constraints.txt pins the tested torch (CPU).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint mutation

# The demo needs the package and its core dependencies only; the tests need the `test` extra
# (which holds every runtime and tool, so it serves the demo too).
$(VENV)/.demo-installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e .
	touch $@

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(VENV)/bin/autocompress demo

test: $(VENV)/.installed
	$(VENV)/bin/pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check autocompress tests benchmarks
	$(VENV)/bin/ruff format --check autocompress tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy benchmarks tests

# Breaks each rule the suite guards on a copy of the package and checks a test fails (slow).
mutation: $(VENV)/.installed
	$(PY) -m benchmarks.mutation_check
