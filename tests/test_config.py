from pathlib import Path

import pytest

from genair_core.config import RecommenderConfig
from tasks.settings import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "genair.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.dataset.name == "movielens-100k"
    assert settings.preprocess.k_core == 5
    assert settings.storage.root == tmp_path / "data"


def test_file_values_and_relative_paths(tmp_path):
    path = write(tmp_path, '[storage]\nroot = "out"\n[preprocess]\nk_core = 3\n')
    settings = load_settings(path)
    assert settings.preprocess.k_core == 3
    assert settings.storage.root == tmp_path / "out"


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, "[preprocess]\nk_core = 3\n")
    monkeypatch.setenv("GENAIR_PREPROCESS__K_CORE", "7")
    assert load_settings(path).preprocess.k_core == 7


def test_wrong_value_names_the_key(tmp_path):
    path = write(tmp_path, "[preprocess]\nk_core = 0\n")
    with pytest.raises(ConfigError, match=r"preprocess\.k_core: Input should be greater"):
        load_settings(path)


def test_wrong_env_value_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENAIR_PREPROCESS__K_CORE", "many")
    with pytest.raises(ConfigError, match="GENAIR_PREPROCESS__K_CORE"):
        load_settings()


def test_misspelt_key_is_an_error(tmp_path):
    path = write(tmp_path, "[preprocess]\nkcore = 5\n")
    with pytest.raises(ConfigError, match=r"preprocess\.kcore: Extra inputs are not permitted"):
        load_settings(path)


def test_unknown_dataset_lists_the_choices(tmp_path):
    path = write(tmp_path, '[dataset]\nname = "netflix"\n')
    with pytest.raises(ConfigError, match=r"dataset\.name: Input should be 'movielens-100k'"):
        load_settings(path)


def test_files_dataset_needs_its_section(tmp_path):
    path = write(tmp_path, '[dataset]\nname = "files"\n')
    with pytest.raises(ConfigError, match=r"\[dataset\.files\] is missing"):
        load_settings(path)


def test_amazon_needs_exactly_one_interaction_source(tmp_path):
    path = write(
        tmp_path,
        '[dataset]\nname = "amazon-reviews"\n[dataset.amazon]\nmeta = "meta_Beauty.json.gz"\n',
    )
    with pytest.raises(ConfigError, match=r"exactly one of dataset\.amazon\.ratings"):
        load_settings(path)


def test_toml_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, "[preprocess\nk_core = 5\n")
    with pytest.raises(ConfigError, match=r"genair\.toml"):
        load_settings(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")


def test_the_code_defaults_are_the_repository_default_run(tmp_path, monkeypatch):
    """genair.toml outside its profiles only shows the defaults: a run without it (a notebook,
    another folder) is the same run, not, say, the paper's 45-run grid."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GENAIR_PROFILE", raising=False)
    repository = load_settings(Path(__file__).parents[1] / "genair.toml")
    without_a_file = load_settings()
    assert repository.dataset.name == "movielens-100k"
    paths = {"storage"}  # resolved against the file's folder
    assert repository.model_dump(exclude=paths) == without_a_file.model_dump(exclude=paths)
    assert repository.storage.root.name == without_a_file.storage.root.name == "data"


def test_empty_column_name_means_the_source_has_none(tmp_path):
    path = write(
        tmp_path,
        '[dataset]\nname = "files"\n[dataset.files]\ncatalog = "c.csv"\ninteractions = "e.csv"\n'
        '[dataset.files.item_columns]\ntitle = ""\n',
    )
    assert load_settings(path).dataset.files.item_columns.title is None


def test_per_backbone_settings_override_only_that_backbone(tmp_path):
    path = write(
        tmp_path,
        '[recommenders.training]\nloss = "bce"\nbatch_size = 128\nmax_epochs = 40\n'
        "[recommenders.per_backbone.bert4rec.training]\n"
        'loss = "ce"\nbatch_size = 32\n'
        "[recommenders.per_backbone.bert4rec.model]\nmask_last_prob = 0.5\n",
    )
    cfg = load_settings(path).recommenders
    model, training = cfg.for_backbone("bert4rec")
    assert (training.loss, training.batch_size, training.max_epochs) == ("ce", 32, 40)
    assert (model.mask_last_prob, model.dropout) == (0.5, 0.5)
    assert cfg.for_backbone("sasrec") == (cfg.model, cfg.training)
    assert (cfg.training.loss, cfg.training.batch_size) == ("bce", 128)


def test_runs_go_seed_by_seed():
    config = RecommenderConfig(
        backbones=["sasrec", "gru4rec"], variants=["id", "llm"], seeds=[2, 1]
    )
    assert config.runs() == [
        ("sasrec", "id", 2),
        ("sasrec", "llm", 2),
        ("gru4rec", "id", 2),
        ("gru4rec", "llm", 2),
        ("sasrec", "id", 1),
        ("sasrec", "llm", 1),
        ("gru4rec", "id", 1),
        ("gru4rec", "llm", 1),
    ]


def test_per_backbone_rejects_settings_that_are_not_per_backbone(tmp_path):
    path = write(tmp_path, "[recommenders.per_backbone.gru4rec]\nseeds = [1]\n")
    with pytest.raises(ConfigError, match=r"per_backbone\.gru4rec\.seeds: Extra inputs"):
        load_settings(path)
    path = write(tmp_path, '[recommenders.per_backbone.gru4rec.model]\nloss = "ce"\n')
    with pytest.raises(ConfigError, match=r"per_backbone\.gru4rec\.model: .*loss"):
        load_settings(path)


def test_per_backbone_values_are_checked_like_the_others(tmp_path):
    path = write(tmp_path, "[recommenders.per_backbone.bert4rec.model]\ndropout = 1.5\n")
    with pytest.raises(ConfigError, match="dropout"):
        load_settings(path)


def test_a_key_of_the_old_flat_recommenders_section_says_where_it_moved(tmp_path):
    path = write(
        tmp_path,
        "[recommenders]\nhidden = 64\nnegatives = 50\n"
        '[recommenders.per_backbone.bert4rec]\nloss = "ce"\n',
    )
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert (
        "recommenders.hidden: Extra inputs are not permitted (got 64); it now belongs in "
        "[recommenders.model]" in message
    )
    assert "it now belongs in [recommenders.evaluation]" in message
    assert "it now belongs in [recommenders.per_backbone.bert4rec.training]" in message
