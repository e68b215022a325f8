# provision-arch developer tasks. `make test` and `make run` set up everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup deps test-deps run demo test test-fast test-trixie-host lint standin bench fuzz clean

TARGET ?= ./base
ISO ?=
# What provision-arch needs on a Debian host (QEMU with 9p, user namespaces, gpgv for the ISO,
# mkfs.ext4 for a throwaway boot's disk).
DEBIAN_PACKAGES := qemu-system-x86 uidmap util-linux gpgv python3-venv e2fsprogs fdisk mtools qemu-utils
# What the tests need on top: shells for the console tests; for the offline ISO stand-in
# debootstrap (its Debian 13 root brings the kernel and busybox: none from the host),
# squashfs, xorriso, xz, pacman with pacstrap/arch-chroot/makepkg; for the export tests ACLs
# and capabilities to pack, sfdisk and mtools for disks, OVMF to boot them, rootless podman
# (runc: crun refuses hosts with hybrid cgroups) and skopeo to run and read the images.
TEST_PACKAGES := $(DEBIAN_PACKAGES) qemu-utils python3 python3-pip zsh bash git openssl gnupg \
  fakeroot kmod debootstrap squashfs-tools xorriso xz-utils cpio zstd \
  pacman-package-manager arch-install-scripts makepkg archlinux-keyring libarchive-tools tzdata \
  openssh-client \
  acl libcap2-bin fdisk mtools ovmf podman skopeo runc
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Install whichever of PACKAGES is missing (one apt-get call; nothing when all are there).
define apt_install
	@missing=$$(for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; fi
endef

deps:
	$(call apt_install,$(DEBIAN_PACKAGES))

test-deps:
	$(call apt_install,$(TEST_PACKAGES))

# Set up and build a box: make run [ISO=archlinux-x86_64.iso] [TARGET=./base]
run: deps setup
	$(BIN)/provision-arch $(TARGET) $(if $(ISO),--iso $(ISO))

setup: $(BIN)/provision-arch

$(BIN)/provision-arch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Everything, on a fresh Debian 12 or 13 as root: installs the Debian packages, the venv, builds
# the stand-in ISO and archive (or finds them cached), then runs unit, orchestration (fake
# QEMU), console (real local shells) and vm (real QEMU on the stand-in), TEST_JOBS test
# modules at a time (each TCG guest keeps one core busy; tests/conftest.py starts the longest
# first). The figures the VM tests measured close the output.
TEST_JOBS ?= 2
test: test-deps setup
	$(BIN)/python -m tests.standin.build
	$(BIN)/python -m tests.standin.archive
	$(BIN)/pytest -v -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder --durations=25 --hypothesis-profile=ci

# The VM tier's core (install, boot over 9p, boot over virtiofs) on Debian 13's QEMU 10 and
# Rust virtiofsd, chrooted in a cached trixie root (root; not part of make test).
test-trixie-host: test-deps setup
	$(BIN)/python -m tests.hosts.trixie

# No VM, no root: a minute.
test-fast: setup
	$(BIN)/pytest -m 'not vm'

# See the tool work without internet: build the stand-in ISO, install a box from it into
# ./demo/base with a generated root password (printed once), print the boot command. ./demo is
# closed to other users (0700): the box's setuid files are yours (as root: root's) on the host.
DEMO ?= ./demo/base
demo: test-deps setup
	@mkdir -p -m 700 "$(dir $(DEMO))" && iso=$$($(BIN)/python -m tests.standin.build | tail -n 1) && \
	pw=$$(mktemp) && trap 'rm -f "$$pw"' EXIT && \
	$(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(12))' > "$$pw" && \
	echo "root password of $(DEMO) (shown once): $$(cat "$$pw")" && \
	$(BIN)/provision-arch $(DEMO) --iso "$$iso" --password-file "$$pw" --packages "base linux mkinitcpio" \
	  --package-cache "$$(dirname "$$iso")/pkg" --accel auto $(if $(FORCE),--force) && \
	echo "boot it with: $(BIN)/provision-arch boot $(DEMO)"

lint: setup
	$(BIN)/ruff check provisioner tests
	$(BIN)/mypy

# Build (or find cached) the offline stand-in ISO; prints its path on the last line.
standin: setup
	$(BIN)/python -m tests.standin.build

# Measure, as root: make bench [BENCH_SECTIONS=install,box,fixed,export,real] (default all;
# BENCH_REAL_SCALES=0.25,1 for the real-size set; tests/bench.py says more).
bench: setup
	$(BIN)/python -m tests.bench

# Feed 100,000 generated and mutated tar streams to the stream extractor in a sandbox (not part of make test).
fuzz: setup
	$(BIN)/python -m tests.fuzz_unpack 100000

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
