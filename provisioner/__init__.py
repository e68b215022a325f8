"""provision-arch: build an Arch Linux root in a host directory from the Arch ISO, over 9p."""

__version__ = "0.2.0"
