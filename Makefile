# provision-arch developer tasks. `make setup` once, then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast lint standin bench clean

setup: $(BIN)/provision-arch

$(BIN)/provision-arch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Everything: unit, console (real local shells) and vm (real QEMU on the ISO stand-in).
test: setup
	$(BIN)/pytest -v

# No VM: seconds.
test-fast: setup
	$(BIN)/pytest -m 'not vm'

lint: setup
	$(BIN)/ruff check provisioner tests
	$(BIN)/mypy

# Build (or find cached) the offline stand-in ISO; prints its path on the last line.
standin: setup
	$(BIN)/python -m tests.standin.build

bench: setup
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
