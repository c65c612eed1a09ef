"""Profiles: named bundles of settings in the config file, laid over it, under the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.params import FullParams
from tasks.settings import ConfigError, load_settings

REPO_CONFIG = Path(__file__).resolve().parents[1] / "genair.toml"

CONFIG = """
[storage]
root = "out"

[preprocess]
k_core = 5

[recommenders]
backbones = ["sasrec", "gru4rec"]
seeds = [44]

[recommenders.training]
loss = "ce"
max_epochs = 50

[profiles.small]
smoke = true
storage.root = "out/small"
preprocess.k_core = 20
recommenders.seeds = [1, 2]
recommenders.training.max_epochs = 3

[profiles.broken]
preprocess.k_core = 0

[profiles.odd]
smoke = "yes"
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("GENAIR_PROFILE", raising=False)
    path = tmp_path / "genair.toml"
    path.write_text(CONFIG)
    return path


def test_no_profile_reads_the_file_as_it_is(config: Path) -> None:
    settings = load_settings(config)
    assert settings.profile == "default"
    assert settings.preprocess.k_core == 5
    assert settings.storage.root == config.parent / "out"
    assert settings.recommenders.training.max_epochs == 50


def test_a_profile_is_laid_over_the_file_table_by_table(config: Path) -> None:
    settings = load_settings(config, profile="small")
    assert settings.profile == "small"
    assert settings.preprocess.k_core == 20
    assert settings.storage.root == config.parent / "out" / "small"  # resolved like the file's
    assert settings.recommenders.seeds == [1, 2]  # a list replaces the file's
    assert settings.recommenders.training.max_epochs == 3
    # What the profile does not name stays as the file has it, inside the same tables too.
    assert settings.recommenders.backbones == ["sasrec", "gru4rec"]
    assert settings.recommenders.training.loss == "ce"


def test_the_environment_overrides_the_profile(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENAIR_PREPROCESS__K_CORE", "7")
    assert load_settings(config, profile="small").preprocess.k_core == 7


def test_genair_profile_chooses_the_profile_when_no_argument_does(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENAIR_PROFILE", "small")
    assert load_settings(config).profile == "small"
    assert load_settings(config).preprocess.k_core == 20
    assert load_settings(config, profile="default").preprocess.k_core == 5


def test_an_unknown_profile_names_the_ones_defined(config: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown profile 'fast'.*defines: broken, odd, small"):
        load_settings(config, profile="fast")


def test_a_wrong_value_in_a_profile_names_the_key_and_the_profile(config: Path) -> None:
    with pytest.raises(ConfigError, match=r"profile broken[\s\S]*preprocess.k_core"):
        load_settings(config, profile="broken")


def test_the_label_is_not_a_setting(config: Path) -> None:
    """Step fingerprints hash the settings' dump: the same values under another profile's name
    must not rerun anything."""
    dump = load_settings(config, profile="small").model_dump()
    assert "profile" not in dump


def test_a_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[storage\nroot = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_settings(path)


def test_flow_parameters_carry_the_profile(config: Path) -> None:
    params = FullParams.checked(config_path=str(config), profile="small")
    assert params.settings().preprocess.k_core == 20
    with pytest.raises(ConfigError, match="unknown profile"):
        FullParams.checked(config_path=str(config), profile="nope").settings()


def test_the_shipped_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """genair.toml: the default compares id and genair under softmax CE, `quick` is a small
    smoke run in its own storage, `paper` is the reference's 45-run grid under BCE."""
    monkeypatch.delenv("GENAIR_PROFILE", raising=False)
    default = load_settings(REPO_CONFIG)
    assert default.recommenders.training.loss == "ce"
    assert set(default.recommenders.variants) >= {"id", "genair"}

    quick = load_settings(REPO_CONFIG, profile="quick")
    assert quick.storage.root != default.storage.root
    assert quick.llm.max_new_tokens < default.llm.max_new_tokens
    assert quick.recommenders.training.max_epochs < default.recommenders.training.max_epochs

    paper = load_settings(REPO_CONFIG, profile="paper")
    grid = paper.recommenders
    assert len(grid.backbones) * len(grid.variants) * len(grid.seeds) == 45
    assert grid.training.loss == "bce"
    assert paper.storage.root == default.storage.root  # shares the default run's archetypes


def test_genair_warm_needs_the_calibration_adapter_size(config: Path) -> None:
    with pytest.raises(ConfigError, match=r"genair-warm needs calibration.hidden \(64\)"):
        load_settings(
            config,
            calibration={"hidden": 64},
            recommenders={"variants": ["id", "genair-warm"], "backbones": ["sasrec"]},
        )
    settings = load_settings(
        config, recommenders={"variants": ["genair-warm"], "model": {"hidden": 128}}
    )
    assert settings.calibration.hidden == 128


def test_a_smoke_profile_marks_its_runs(config: Path) -> None:
    """`smoke = true` is no setting: it marks what the run prints and writes as not a result."""
    assert load_settings(config, profile="small").smoke_run
    assert not load_settings(config).smoke_run
    assert "smoke_run" not in load_settings(config, profile="small").model_dump()
    with pytest.raises(ConfigError, match=r"profiles.odd.smoke: true or false"):
        load_settings(config, profile="odd")
    assert load_settings(REPO_CONFIG, profile="quick").smoke_run
    assert not load_settings(REPO_CONFIG, profile="paper").smoke_run


@pytest.mark.parametrize(
    ("profiles", "says"),
    [
        ("profiles = 1\n", "a table of"),
        ('[profiles]\nquick = "x"\n', "a table of"),
        ("[profiles.default]\npreprocess.k_core = 3\n", "is the file itself"),
    ],
)
def test_a_malformed_profiles_table_is_a_config_error(
    tmp_path: Path, profiles: str, says: str
) -> None:
    path = tmp_path / "genair.toml"
    path.write_text(profiles)
    with pytest.raises(ConfigError, match=says):
        load_settings(path, profile="quick")
