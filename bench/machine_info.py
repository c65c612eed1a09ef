"""The CPU a benchmark ran on, for the header of its report and any file it writes.

Timings, and the last bits of float results, compare only on one CPU model: oneDNN and MKL pick
other kernels on other CPUs (AMX on an Intel Xeon, AVX-512 on an AMD EPYC Zen 4 or Zen 5).
"""

from __future__ import annotations

import platform
import subprocess

AMX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8")


def _first_cpu() -> dict[str, str]:
    """The fields of the first processor in /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def _lscpu_model_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            return value.strip()
    return ""


def cpu_model() -> str:
    """`model name (family F, model M)` of the first CPU (AMD family 25 = Zen 4, 26 = Zen 5)."""
    fields = _first_cpu()
    name = fields.get("model name") or _lscpu_model_name() or platform.processor() or "unknown"
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def cpu_flags() -> set[str]:
    return set(_first_cpu().get("flags", "").split())


def has_amx() -> bool:
    return any(flag in cpu_flags() for flag in AMX_FLAGS)


def cpu_description() -> str:
    """One line for a report header: the CPU model and whether it has AMX."""
    return f"{cpu_model()}, AMX {'yes' if has_amx() else 'no'}"


def cpu_info() -> dict[str, str | bool]:
    """The same for a JSON result: {"cpu_model": ..., "amx": ...}."""
    return {"cpu_model": cpu_model(), "amx": has_amx()}
