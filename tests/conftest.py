"""Shared fixtures."""

import os
import signal
from pathlib import Path

import pytest

from storage.wheel_cache import ensure_wheel

# What a test needs, from the fixtures it uses: `pytest -m "not prefect_server and not downloads"`
# runs those that need neither. Tests that start a server or download by themselves carry the mark.
MARKS_OF_FIXTURES = {
    "prefect_harness": "prefect_server",
    "recbole_wheel": "downloads",
    "test_cache_dir": "downloads",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, mark in MARKS_OF_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(mark)


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, a plain `kill`) ends the session as Ctrl-C does: fixtures tear
    down, so the harness's Prefect server and the engines of module fixtures are stopped instead
    of left running."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@pytest.fixture(scope="session")
def recbole_wheel() -> Path:
    """The real recbole wheel (MovieLens-100K inside), downloaded once per machine.

    Cached in ~/.cache/genair like a real run, or wherever GENAIR_TEST_CACHE points.
    """
    return ensure_wheel("recbole", "1.2.1", _cache_dir())


@pytest.fixture(scope="session")
def test_cache_dir() -> Path:
    """Where tests keep downloads between runs, as a real run does."""
    return _cache_dir()


def _cache_dir() -> Path:
    return Path(os.environ.get("GENAIR_TEST_CACHE", "~/.cache/genair")).expanduser()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole test session (~15 s to start on a quiet machine;
    the deadline only catches a server that never starts, on however loaded a machine)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=600):
        yield


@pytest.fixture(scope="module")
def ml100k_config(tmp_path_factory, test_cache_dir, recbole_wheel):
    """Write a genair.toml for the real ml-100k data in a fresh folder, plus `extra` TOML."""

    def write(name: str, extra: str = "") -> Path:
        folder = tmp_path_factory.mktemp(name)
        config = folder / "genair.toml"
        config.write_text(
            f'[storage]\nroot = "data"\ncache_dir = "{test_cache_dir}"\n'
            f'[dataset]\nname = "movielens-100k"\n{extra}'
        )
        return config

    return write
