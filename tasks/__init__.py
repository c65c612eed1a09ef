"""Prefect tasks: thin wrappers over genair_core and storage."""
