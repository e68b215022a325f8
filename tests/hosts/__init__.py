"""The VM tier's core run on other hosts than the machine's own Debian (``make test-trixie-host``)."""
