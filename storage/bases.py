"""Fitted PCA bases on disk: one safetensors file per (model, prompt version and settings).

    bases = BasesFile(store, model_id, prompt_version, settings_id)
    bases.read()                          # the stored bases, or None before the first fit
    bases.write({"input": input_basis.to_dict(), "gen": ...})

    save_bases(path, {"input": ...}, {"model_id": ..., ...})   # the file format itself
    plain, metadata = load_bases(path)    # the same plain dicts; PcaBasis.from_dict rebuilds one

A basis is a plain dict here: the arrays `mean`, `components`, `explained_variance_ratio` and the
ints `n_fit`, `seed` (what genair_core.llm.pooling.PcaBasis.to_dict gives). A recipe's file is
`<root>/models/pca/<model>-<prompt version>-<settings id>.safetensors` (`bases_path`), and its
metadata names the three ids. Inside the file, basis `name` is three float32 tensors
`name.mean` (D,), `name.components` (k, D) and `name.explained_variance_ratio` (k,), and the
string metadata `name.n_fit` and `name.seed`; `format` names this layout. The caller's own
metadata (model_id, prompt_version, ...) is stored beside those keys and comes back unchanged.
safetensors holds raw arrays and strings only: unlike the reference's pickles, loading a file can
never run code.

Writes are atomic (temp file in the same folder, fsync, os.replace), so an interrupted write
leaves the previous file whole. The bytes depend only on the arrays and the metadata: safetensors
writes its metadata map in a random order on each call, so the header is rewritten with sorted
keys, and saving the same bases twice gives byte-identical files (stable manifest hashes).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from storage.store import Store, atomic_write_bytes

FORMAT = "genair-pca-bases/1"  # bump when the layout below changes
_ARRAYS = ("mean", "components", "explained_variance_ratio")
_INTS = ("n_fit", "seed")
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_MAX_STEM = 80  # characters of a sanitised id kept in a file name

Basis = dict[str, np.ndarray | int]  # _ARRAYS -> array, _INTS -> int


class BasesFileError(ValueError):
    """A bases file exists but is not a complete, readable file in this module's layout."""


class BasesNotFoundError(FileNotFoundError):
    """No bases file at the path: nothing has been fitted yet for this model and prompt."""


class BasesFile:
    """The PCA bases of one archetype recipe (model, prompt version, settings) in a store."""

    def __init__(self, store: Store, model_id: str, prompt_version: str, settings_id: str) -> None:
        self.path = bases_path(store.root, model_id, f"{prompt_version}-{settings_id}")
        self._metadata = {
            "model_id": model_id,
            "prompt_version": prompt_version,
            "settings_id": settings_id,
        }

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> dict[str, Basis] | None:
        """The stored bases, or None when none were stored yet."""
        return load_bases(self.path)[0] if self.exists() else None

    def write(self, bases: Mapping[str, Mapping[str, object]]) -> None:
        save_bases(self.path, bases, self._metadata)


def bases_path(root: Path, model_id: str, version: str) -> Path:
    """`<root>/models/pca/<model>-<version>.safetensors`, both ids made file-name safe.

    A model id may be a hub name ("HuggingFaceTB/SmolLM2-135M-Instruct") or a local folder path.
    Characters outside [A-Za-z0-9._-] become "_", and an id that had to change gets a short hash
    of the original appended, so two different ids can never share a file.
    """
    return Path(root) / "models" / "pca" / f"{_safe(model_id)}-{_safe(version)}.safetensors"


def save_bases(
    path: Path, bases: Mapping[str, Mapping[str, object]], metadata: dict[str, str]
) -> None:
    """Write the bases and the caller's metadata to one safetensors file, atomically."""
    path = Path(path)
    if not bases:
        raise ValueError("save_bases needs at least one basis")
    tensors: dict[str, np.ndarray] = {}
    header: dict[str, str] = {"format": FORMAT}
    for name, basis in bases.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"basis name {name!r} must match {_NAME.pattern}")
        for field in _ARRAYS:
            tensors[f"{name}.{field}"] = np.ascontiguousarray(basis[field])
        for field in _INTS:
            header[f"{name}.{field}"] = str(int(basis[field]))
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map str to str; got {key!r}: {value!r}")
        if key in header:
            raise ValueError(f"metadata key {key!r} is reserved by the bases file layout")
        header[key] = value

    atomic_write_bytes(path, _canonical(save(tensors, metadata=header)))


def load_bases(path: Path) -> tuple[dict[str, Basis], dict[str, str]]:
    """The bases in a file written by save_bases, and the caller's metadata as it was saved."""
    path = Path(path)
    if not path.is_file():
        raise BasesNotFoundError(f"no PCA bases file at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = dict(f.metadata() or {})
            keys = f.keys()  # safe_open is not a mapping: it cannot be iterated itself
            tensors = {key: f.get_tensor(key) for key in keys}
    except (SafetensorError, OSError) as e:
        raise BasesFileError(f"cannot read PCA bases file {path}: {e}") from e
    if header.get("format") != FORMAT:
        raise BasesFileError(
            f"{path} is not a PCA bases file of format {FORMAT!r} (format {header.get('format')!r})"
        )

    names = sorted({key.rsplit(".", 1)[0] for key in tensors})
    reserved = {"format"}
    bases: dict[str, Basis] = {}
    try:
        for name in names:
            arrays = {field: tensors[f"{name}.{field}"] for field in _ARRAYS}
            ints = {field: int(header[f"{name}.{field}"]) for field in _INTS}
            bases[name] = {**arrays, **ints}
            reserved.update(f"{name}.{field}" for field in _INTS)
    except (KeyError, ValueError) as e:
        raise BasesFileError(f"PCA bases file {path} is incomplete or inconsistent: {e}") from e
    if not bases or len(tensors) != len(names) * len(_ARRAYS):
        raise BasesFileError(f"PCA bases file {path} holds unexpected tensors {sorted(tensors)}")
    metadata = {key: value for key, value in header.items() if key not in reserved}
    return bases, metadata


def _canonical(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted (padded to 8 bytes again)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # tensor offsets are relative to the data, so any length works
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def _safe(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".")[:_MAX_STEM] or "_"
    if cleaned == text:
        return text
    return f"{cleaned}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
