# fleetup: everything a fresh machine needs, from Python 3.11+, make, git and apt.
#   make demo    the main job: a whole fleet update story on embedded defaults
#   make test    system packages, virtualenv, lint, types, the full test suite
#   make bench   the benchmark suite (prints a table; see benchmarks/README.md)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEPS   := pyproject.toml requirements/constraints.txt

.PHONY: demo test lint typecheck unit sysdeps bench venv lock clean

$(STAMP): $(DEPS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e '.[server,push,test,bench]'
	touch $(STAMP)

venv: $(STAMP)

sysdeps:
	scripts/sysdeps.sh

demo: $(STAMP)
	$(BIN)/fleetup demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

test: sysdeps $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: sysdeps $(STAMP)
	$(BIN)/python -m benchmarks

# Re-pin after changing dependencies: resolves the newest allowed versions.
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet -e '.[server,push,test,bench]'
	.lockenv/bin/pip freeze --exclude-editable | grep -v '^fleetup' > requirements/constraints.txt
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist
