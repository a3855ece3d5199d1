"""Sluice command line and offline stack (not deployed)."""
