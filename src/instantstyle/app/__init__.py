"""The surfaces: command line, web UI, batch runner (local and Ray), sweep, selftest. Each only turns user input
into ``Request``s and calls the core."""
