"""Shared fixtures."""

import os
from pathlib import Path

import pytest

from storage.wheel_cache import ensure_wheel


@pytest.fixture(scope="session")
def recbole_wheel() -> Path:
    """The real recbole wheel (MovieLens-100K inside), downloaded once per machine.

    Cached in ~/.cache/genair like a real run, or wherever GENAIR_TEST_CACHE points.
    """
    cache_dir = Path(os.environ.get("GENAIR_TEST_CACHE", "~/.cache/genair")).expanduser()
    return ensure_wheel("recbole", "1.2.1", cache_dir)
