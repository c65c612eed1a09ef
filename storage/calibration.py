"""The calibration adapter on disk: one safetensors file and one JSON manifest per settings id.

    files = AdapterFiles(store, settings_id)
    files.read()                       # (tensors, manifest) or None before the first training
    files.write(tensors, manifest)     # manifest["version"] names the adapter

Layout: `<root>/models/calibration/<settings id>.safetensors` (the adapter's weights and the
co-occurrence sketch it was trained on, genair_core.item_space.calibration.Adapter.tensors) beside
`<settings id>.json` (version, input hashes, settings, pair count, epochs, seconds, the training
log and the spread diagnostics). One adapter per settings id: settings that change the weights
find no adapter and train one; going back to earlier settings finds theirs again.

Both files are written atomically, the weights first; each carries the version, and a read that
finds them disagree (a crash between the two renames, a hand edit) is an error rather than a
silently mixed adapter. safetensors holds raw arrays only: loading can never run code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from storage.store import Store, atomic_write_bytes

FORMAT = "genair-calibration-adapter/1"  # bump when the layout above changes


class AdapterFileError(ValueError):
    """A stored adapter exists but cannot be used as it is."""


class AdapterFiles:
    """The stored calibration adapter of one settings id."""

    def __init__(self, store: Store, settings_id: str) -> None:
        folder = Path(store.root) / "models" / "calibration"
        self.path = folder / f"{settings_id}.safetensors"
        self.manifest_path = folder / f"{settings_id}.json"

    def exists(self) -> bool:
        return self.path.is_file() and self.manifest_path.is_file()

    def read(self) -> tuple[dict[str, np.ndarray], dict[str, object]] | None:
        """The stored tensors and manifest, or None when no adapter was stored yet."""
        if not self.exists():
            return None
        remedy = "set calibration.retrain = true (or run with --force) to train a new one"
        try:
            with safe_open(str(self.path), framework="numpy") as f:
                header = dict(f.metadata() or {})
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
            manifest = json.loads(self.manifest_path.read_text())
        except (SafetensorError, OSError, json.JSONDecodeError) as e:
            raise AdapterFileError(
                f"cannot read the calibration adapter {self.path}: {e}; {remedy}"
            ) from e
        if header.get("format") != FORMAT:
            raise AdapterFileError(f"{self.path} is not of format {FORMAT!r}; {remedy}")
        if header.get("version") != manifest.get("version"):
            raise AdapterFileError(
                f"{self.path} (version {header.get('version')}) and {self.manifest_path} "
                f"(version {manifest.get('version')}) disagree; {remedy}"
            )
        return tensors, manifest

    def write(self, tensors: dict[str, np.ndarray], manifest: dict[str, object]) -> None:
        version = manifest.get("version")
        if not isinstance(version, str):
            raise ValueError("an adapter manifest needs a string 'version'")
        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        atomic_write_bytes(self.path, save(arrays, metadata={"format": FORMAT, "version": version}))
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(self.manifest_path, text.encode())
