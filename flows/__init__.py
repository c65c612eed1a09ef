"""Prefect flows and the `genair` command."""
