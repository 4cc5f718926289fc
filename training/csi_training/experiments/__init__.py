"""Reproducible experiments: each module is a command that writes a results table."""
