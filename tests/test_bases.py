"""Fitted PCA bases on disk: exact round trips, safetensors format, atomic writes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from genair_core.llm.pooling import PcaBasis, basis_id, fit_basis
from storage.bases import (
    BasesFile,
    BasesFileError,
    BasesNotFoundError,
    bases_path,
    load_bases,
    save_bases,
)
from storage.store import Store

METADATA = {"model_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "prompt_version": "p3-é"}


def _fitted(seed: int = 0) -> dict[str, PcaBasis]:
    rng = np.random.default_rng(seed)
    input_emb = rng.normal(size=(30, 16)).astype(np.float32)
    gen_emb = rng.normal(size=(30, 24)).astype(np.float32)
    return {"input": fit_basis(input_emb, 8), "gen": fit_basis(gen_emb, 6, seed=7)}


def _bases(seed: int = 0) -> dict[str, dict]:
    """The bases as storage takes them: plain dicts (PcaBasis.to_dict)."""
    return {name: basis.to_dict() for name, basis in _fitted(seed).items()}


def _assert_same(a: PcaBasis, b: PcaBasis) -> None:
    assert np.array_equal(a.mean, b.mean)
    assert np.array_equal(a.components, b.components)
    assert np.array_equal(a.explained_variance_ratio, b.explained_variance_ratio)
    assert (a.n_fit, a.seed) == (b.n_fit, b.seed)


def _temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_round_trip_is_exact_and_keeps_metadata(tmp_path):
    bases = _fitted()
    path = tmp_path / "models" / "pca" / "m-p3.safetensors"
    save_bases(path, {name: basis.to_dict() for name, basis in bases.items()}, METADATA)

    plain, metadata = load_bases(path)
    assert metadata == METADATA
    assert sorted(plain) == ["gen", "input"]
    loaded = {name: PcaBasis.from_dict(fields) for name, fields in plain.items()}
    for name in bases:
        _assert_same(loaded[name], bases[name])
    assert basis_id(loaded["input"], loaded["gen"]) == basis_id(bases["input"], bases["gen"])
    assert loaded["gen"].seed == 7
    assert loaded["input"].n_fit == 30
    assert _temp_files(path.parent) == []


def test_file_is_plain_safetensors(tmp_path):
    bases = _bases()
    path = tmp_path / "bases.safetensors"
    save_bases(path, bases, METADATA)
    tensors = load_file(path)
    assert sorted(tensors) == sorted(
        f"{name}.{field}"
        for name in ("input", "gen")
        for field in ("mean", "components", "explained_variance_ratio")
    )
    assert tensors["input.components"].shape == (8, 16)
    assert tensors["gen.components"].dtype == np.float32
    np.testing.assert_array_equal(tensors["gen.mean"], bases["gen"]["mean"])


def test_same_bases_give_byte_identical_files_across_processes(tmp_path):
    """safetensors writes its metadata map in a random order; save_bases sorts it."""
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'tests');"
        "from test_bases import _bases, METADATA; from storage.bases import save_bases;"
        "save_bases(Path(sys.argv[1]), _bases(), METADATA)"
    )
    root = Path(__file__).resolve().parents[1]
    paths = [tmp_path / f"{i}.safetensors" for i in range(2)]
    save_bases(tmp_path / "here.safetensors", _bases(), METADATA)
    for path in paths:
        subprocess.run([sys.executable, "-c", script, str(path)], cwd=root, check=True)
    data = {p.read_bytes() for p in [*paths, tmp_path / "here.safetensors"]}
    assert len(data) == 1


def test_interrupted_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "bases.safetensors"
    old = _bases(seed=0)
    save_bases(path, old, METADATA)
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)  # the rename of the atomic write
    with pytest.raises(OSError, match="disk full"):
        save_bases(path, _bases(seed=1), {"model_id": "other"})
    assert path.read_bytes() == before
    assert _temp_files(tmp_path) == []
    loaded, metadata = load_bases(path)
    _assert_same(PcaBasis.from_dict(loaded["input"]), PcaBasis.from_dict(old["input"]))
    assert metadata == METADATA


def test_missing_and_corrupt_files_raise_errors_naming_the_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(BasesNotFoundError, match=r"nope\.safetensors"):
        load_bases(missing)

    path = tmp_path / "bases.safetensors"
    save_bases(path, _bases(), METADATA)
    data = path.read_bytes()
    for corrupt in (data[:-16], b"not a safetensors file at all", b""):
        path.write_bytes(corrupt)
        with pytest.raises(BasesFileError, match=re.escape(str(path))):
            load_bases(path)


def test_safetensors_files_of_another_layout_are_rejected(tmp_path):
    from safetensors.numpy import save_file

    other = tmp_path / "other.safetensors"
    save_file({"weight": np.zeros((2, 2), np.float32)}, other)
    with pytest.raises(BasesFileError, match=re.escape(str(other)) + ".*format"):
        load_bases(other)

    incomplete = tmp_path / "incomplete.safetensors"
    save_file(
        {"input.mean": np.zeros(4, np.float32)},
        incomplete,
        metadata={"format": "genair-pca-bases/1"},
    )
    with pytest.raises(BasesFileError, match=re.escape(str(incomplete)) + ".*incomplete"):
        load_bases(incomplete)


def test_save_rejects_reserved_or_non_string_metadata_and_bad_names(tmp_path):
    path = tmp_path / "bases.safetensors"
    with pytest.raises(ValueError, match="reserved"):
        save_bases(path, _bases(), {"input.n_fit": "3"})
    with pytest.raises(ValueError, match="reserved"):
        save_bases(path, _bases(), {"format": "x"})
    with pytest.raises(TypeError, match="str to str"):
        save_bases(path, _bases(), {"n_items": 3})
    with pytest.raises(ValueError, match="basis name"):
        save_bases(path, {"in.put": _bases()["input"]}, {})
    with pytest.raises(ValueError, match="at least one"):
        save_bases(path, {}, {})
    assert not path.exists()
    assert _temp_files(tmp_path) == []


def test_bases_path_sanitises_ids_without_collisions(tmp_path):
    plain = bases_path(tmp_path, "SmolLM2-135M-Instruct", "v3")
    assert plain == tmp_path / "models" / "pca" / "SmolLM2-135M-Instruct-v3.safetensors"

    hub = bases_path(tmp_path, "HuggingFaceTB/SmolLM2-135M-Instruct", "v3")
    local = bases_path(tmp_path, "/models/../Qwen2-7B", "v3")
    for path in (hub, local):
        assert path.parent == tmp_path / "models" / "pca"
        assert "/" not in path.name
        assert not path.name.startswith(".")
    assert hub.name.startswith("HuggingFaceTB_SmolLM2-135M-Instruct-")
    # "a/b" and "a_b" must not share a file
    assert bases_path(tmp_path, "a/b", "v") != bases_path(tmp_path, "a_b", "v")
    assert bases_path(tmp_path, "m" * 500, "v").name.__len__() < 120
    assert os.sep not in bases_path(tmp_path, "m", "p/1").name


def test_a_recipes_bases_file_is_none_until_written_then_round_trips(tmp_path):
    bases = BasesFile(Store(tmp_path), "HuggingFaceTB/SmolLM2-135M-Instruct", "p3", "s1")
    # The layout runs written before BasesFile existed still find.
    assert bases.path == bases_path(tmp_path, "HuggingFaceTB/SmolLM2-135M-Instruct", "p3-s1")
    assert not bases.exists()
    assert bases.read() is None

    bases.write(_bases())
    assert bases.exists()
    stored = bases.read()
    for name, basis in _fitted().items():
        _assert_same(PcaBasis.from_dict(stored[name]), basis)
    _, metadata = load_bases(bases.path)
    assert metadata == {
        "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "prompt_version": "p3",
        "settings_id": "s1",
    }


def test_an_unreadable_recipe_file_is_an_error_not_a_missing_one(tmp_path):
    bases = BasesFile(Store(tmp_path), "m", "p3", "s1")
    bases.path.parent.mkdir(parents=True)
    bases.path.write_bytes(b"not safetensors")
    with pytest.raises(BasesFileError, match=re.escape(str(bases.path))):
        bases.read()
