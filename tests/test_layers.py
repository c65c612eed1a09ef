"""The layers import one way: flows -> tasks -> storage, genair_core; storage -> genair_core.tables.

Every import statement of every module counts, including those inside functions, so a lazy
import cannot hide a dependency.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Callable
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("genair_core", "storage", "tasks", "flows")

# What genair_core never imports: it is the method as a plain library.
CORE_FORBIDDEN = ("storage", "tasks", "flows", "prefect")
# What storage may take from genair_core: the table schemas (and the raw input record) that both
# sides share, and the settings sections, because storage opens the configured dataset
# (storage.datasets reads DatasetConfig). Both are plain declarations without logic.
STORAGE_ALLOWED_CORE = ("genair_core.tables", "genair_core.config")
STORAGE_FORBIDDEN = ("tasks", "flows")
# Tasks and flows hand work to genair_core and storage; arrays, tensors, models and files stay
# there.
ORCHESTRATION_FORBIDDEN = (
    "torch",
    "numpy",
    "pyarrow",
    "duckdb",
    "faiss",
    "scipy",
    "sklearn",
    "safetensors",
    "transformers",
    "vllm",
)
# Dask is one way to run the archetype batches, chosen in one module: nothing else knows of it.
DASK = ("dask", "distributed", "prefect_dask")
DASK_MODULE = "tasks/runners.py"


def _modules(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's own package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
        elif _is_dynamic_import(node) and isinstance(node.args[0], ast.Constant):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def _is_dynamic_import(node: ast.AST) -> bool:
    """`importlib.import_module("x")`, `import_module("x")` or `__import__("x")`."""
    if not isinstance(node, ast.Call) or not node.args:
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("import_module", "__import__")


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in packages)


def _violations(layer: str, bad: Callable[[str], bool]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _modules(layer)
        for line, module in _imports(path)
        if bad(module)
    ]


def test_every_layer_has_modules():
    for layer in LAYERS:
        assert _modules(layer), f"no Python files under {layer}/"


def test_the_import_walker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    module = tmp_path / "genair_core" / "models" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "import os\n\n\ndef f():\n    from storage.store import Store\n"
        "    from . import y\n    from ..tables import ITEMS\n"
        "    importlib.import_module('tasks.common')\n    __import__('flows')\n"
    )
    assert [m for _, m in _imports(module, root=tmp_path)] == [
        "os",
        "storage.store",
        "genair_core.models",
        "genair_core.tables",
        "tasks.common",
        "flows",
    ]


def test_genair_core_imports_no_storage_tasks_flows_or_prefect():
    assert _violations("genair_core", lambda m: _within(m, CORE_FORBIDDEN)) == []


def test_storage_imports_only_the_shared_declarations_of_genair_core():
    def bad(module: str) -> bool:
        if _within(module, STORAGE_FORBIDDEN):
            return True
        return _within(module, ("genair_core",)) and not _within(module, STORAGE_ALLOWED_CORE)

    assert _violations("storage", bad) == []


@pytest.mark.parametrize("layer", ["tasks", "flows"])
def test_tasks_and_flows_import_no_array_table_or_model_library(layer):
    assert _violations(layer, lambda m: _within(m, ORCHESTRATION_FORBIDDEN)) == []


def test_tasks_import_no_flows():
    assert _violations("tasks", lambda m: _within(m, ("flows",))) == []


def test_only_the_task_runner_module_knows_dask():
    found = [v for layer in LAYERS for v in _violations(layer, lambda m: _within(m, DASK))]
    assert found
    assert all(v.startswith(f"{DASK_MODULE}:") for v in found), found


def _declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    return {_normalized(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in requirements}


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_pyproject_declares_every_distribution_the_code_imports():
    """Every third-party import of the four layers comes from a distribution pyproject.toml
    names (the lock pins versions; pyproject says what the code needs)."""
    providers = packages_distributions()
    missing = sorted(
        f"{distribution} ({path.relative_to(ROOT)}:{line} imports {module})"
        for layer in LAYERS
        for path in _modules(layer)
        for line, module in _imports(path)
        if (top := module.split(".")[0]) and top not in {*sys.stdlib_module_names, *LAYERS}
        for distribution in map(_normalized, providers.get(top, [top]))
        if distribution not in _declared_distributions()
    )
    assert missing == []
