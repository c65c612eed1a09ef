"""FAISS index files: written atomically with a manifest, checked before any use.

Layout of one space's index (space: "calibrated" or "raw"):

    indexes/<space>/index.faiss     faiss.write_index of the CPU index (IndexIDMap2)
    indexes/<space>/ids.parquet     faiss_id -> item_id (genair_core.item_space.index.IDS)
    indexes/<space>/manifest.json   what was indexed and how, and the SHA-256 of both files

Each file is written to a temporary name beside it and renamed into place; the manifest goes
last. A crash between the renames leaves files whose hashes the old manifest does not list, so
the next check finds the mismatch and the index is rebuilt: a stale or half-written index is
never searched. `check` verifies the manifest against both files and the index's own ntotal
and d; `load` raises IndexFileError with the reason on any mismatch.

Manifest keys: space, vectors {table, sha256, versions}, count, dimension, index {type, metric,
m, ef_construction, ef_search}, build_seconds, fingerprint, faiss_version, built_at, files
{index, ids: sha256}, format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import faiss
import pyarrow as pa
import pyarrow.parquet as pq

from genair_core.tables import VECTOR_SPACES
from storage.store import Store, _sha256, atomic_write, atomic_write_bytes

FORMAT = "genair-faiss-index/1"  # bump when the layout above changes


class IndexFileError(ValueError):
    """An index is missing, unreadable, or does not match its manifest."""


@dataclass(frozen=True)
class StoredIndex:
    index: faiss.Index  # the CPU index as written
    ids: pa.Table  # faiss_id -> item_id
    manifest: dict[str, object]


class IndexFiles:
    """The index of one vector space in a store."""

    def __init__(self, store: Store, space: str) -> None:
        if space not in VECTOR_SPACES:
            raise ValueError(f"unknown index space {space!r}; spaces: {', '.join(VECTOR_SPACES)}")
        self.space = space
        self.table = VECTOR_SPACES[space]
        self.folder = store.root / "indexes" / space
        self.index_path = self.folder / "index.faiss"
        self.ids_path = self.folder / "ids.parquet"
        self.manifest_path = self.folder / "manifest.json"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def write(
        self,
        index: faiss.Index,
        ids: pa.Table,
        *,
        vectors_sha256: str,
        versions: list[str],
        params: dict[str, object],
        build_seconds: float,
        fingerprint: str,
    ) -> dict[str, object]:
        """Write the index, its ids and then its manifest, each atomically; the manifest."""
        if ids.num_rows != index.ntotal:
            raise ValueError(f"{ids.num_rows} ids for an index of {index.ntotal} vectors")
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.index_path, lambda tmp: faiss.write_index(index, str(tmp)))
        atomic_write(self.ids_path, lambda tmp: pq.write_table(ids, tmp, compression="zstd"))
        manifest = {
            "format": FORMAT,
            "space": self.space,
            "vectors": {"table": self.table, "sha256": vectors_sha256, "versions": versions},
            "count": int(index.ntotal),
            "dimension": int(index.d),
            "index": params,
            "build_seconds": round(build_seconds, 3),
            "fingerprint": fingerprint,
            "faiss_version": faiss.__version__,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": {"index": _sha256(self.index_path), "ids": _sha256(self.ids_path)},
        }
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(self.manifest_path, text.encode())
        return manifest

    def load(self, vectors_sha256: str | None = None) -> StoredIndex:
        """The stored index, verified against its manifest (and against the vector table's
        current hash when given); IndexFileError saying what is wrong otherwise."""
        manifest = self._manifest()
        for name, path in (("index", self.index_path), ("ids", self.ids_path)):
            if not path.is_file():
                raise IndexFileError(f"{self.space} index: {path} is missing")
            if _sha256(path) != manifest.get("files", {}).get(name):
                raise IndexFileError(
                    f"{self.space} index: {path} is not the file its manifest describes "
                    "(truncated, replaced or half-written)"
                )
        try:
            index = faiss.read_index(str(self.index_path))
        except RuntimeError as err:
            raise IndexFileError(
                f"{self.space} index: cannot read {self.index_path}: {err}"
            ) from None
        ids = pq.read_table(self.ids_path)
        found = {"count": int(index.ntotal), "dimension": int(index.d)}
        for key, value in found.items():
            if manifest.get(key) != value:
                raise IndexFileError(
                    f"{self.space} index: {self.index_path} holds {key} {value}, its manifest "
                    f"says {manifest.get(key)}"
                )
        if ids.num_rows != index.ntotal:
            raise IndexFileError(
                f"{self.space} index: {ids.num_rows} ids for {index.ntotal} vectors"
            )
        if (
            vectors_sha256 is not None
            and manifest.get("vectors", {}).get("sha256") != vectors_sha256
        ):
            raise IndexFileError(
                f"{self.space} index was built from another version of {self.table}"
            )
        return StoredIndex(index, ids, manifest)

    def check(self, vectors_sha256: str | None = None) -> str | None:
        """None if the stored index can be used as it is, else why not."""
        try:
            self.load(vectors_sha256)
        except IndexFileError as err:
            return str(err)
        return None

    def manifest(self) -> dict[str, object]:
        """The stored manifest, without checking the files against it; IndexFileError if there
        is none or it is unreadable."""
        return self._manifest()

    def fingerprint(self) -> str | None:
        """The input fingerprint the stored index was built for, None if there is none."""
        try:
            return self._manifest().get("fingerprint")
        except IndexFileError:
            return None

    def _manifest(self) -> dict:
        if not self.manifest_path.is_file():
            raise IndexFileError(f"no {self.space} index has been built ({self.manifest_path})")
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise IndexFileError(f"{self.space} index: unreadable manifest: {err}") from None
        if manifest.get("format") != FORMAT:
            raise IndexFileError(
                f"{self.space} index: manifest format {manifest.get('format')!r}, not {FORMAT!r}"
            )
        return manifest
