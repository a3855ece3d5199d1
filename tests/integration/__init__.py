"""Integration tests: the offline stack, real HTTP, real handlers."""
