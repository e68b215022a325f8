# provision-arch developer tasks. `make setup` once, then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup deps run test test-fast lint standin bench clean

TARGET ?= ./base
ISO ?=
# What provision-arch needs on a Debian host (QEMU with 9p, user namespaces, gpgv for the ISO).
DEBIAN_PACKAGES := qemu-system-x86 uidmap util-linux gpgv python3-venv
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing; fi

# Set up and build a box: make run [ISO=archlinux-x86_64.iso] [TARGET=./base]
run: deps setup
	$(BIN)/provision-arch $(TARGET) $(if $(ISO),--iso $(ISO))

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
