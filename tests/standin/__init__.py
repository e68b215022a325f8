"""Offline stand-in of the Arch Linux ISO for the VM tests."""
