# The project's entry points. Every target that needs Python installs the venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROTO := protos/ondewo/sip/sip.proto

.PHONY: install proto run test bench lint typecheck check images kind-up deploy e2e clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,local]'
	touch $@

# Regenerates the Python code for the wire contract; tests/test_proto.py fails when it is stale.
proto: $(INSTALLED)
	$(PY) protos/generate.py

run: $(INSTALLED)
	$(PY) -m sip_worker.local_run

test: $(INSTALLED)
	$(PY) -m pytest

bench: $(INSTALLED)
	@set -e; for bench in bench/bench_*.py; do echo "== $$bench"; $(PY) $$bench; done

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(INSTALLED)
	$(VENV)/bin/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
