"""Which settings enter a recommender run's cache key (a changed key retrains the run)."""

import pytest

from genair_core.config import (
    EvaluationConfig,
    ModelConfig,
    RecommenderConfig,
    TrainingConfig,
)
from genair_core.experiment import TRAINING_VERSION, RunSpec

RUNS = [(b, v) for b in ("sasrec", "bert4rec", "gru4rec") for v in ("id", "genair", "gen-only")]


def key(config: RecommenderConfig, backbone: str, variant: str, input_dims: int = 384) -> list:
    run = RunSpec.of(config, backbone, variant, seed=44)
    return run.cache_key(input_dims, {name: f"sha-{name}" for name in run.tables})


@pytest.mark.parametrize(("backbone", "variant"), RUNS)
def test_grid_workers_device_and_evaluation_settings_do_not_retrain(backbone, variant):
    plain = RecommenderConfig()
    other = RecommenderConfig(
        backbones=["gru4rec"],
        variants=["id"],
        seeds=[1, 2],
        workers=4,
        device="cpu",
        evaluation=EvaluationConfig(negatives=50, negatives_seed=3, tail_share=0.5),
    )
    assert key(other, backbone, variant) == key(plain, backbone, variant)


@pytest.mark.parametrize(("backbone", "variant"), RUNS)
def test_model_and_training_settings_retrain(backbone, variant):
    plain = key(RecommenderConfig(), backbone, variant)
    for changed in (
        RecommenderConfig(model=ModelConfig(hidden=64)),
        RecommenderConfig(model=ModelConfig(dropout=0.1)),
        RecommenderConfig(training=TrainingConfig(loss="ce")),
        RecommenderConfig(training=TrainingConfig(max_epochs=3)),
    ):
        assert key(changed, backbone, variant) != plain


def test_bert4rec_settings_leave_the_other_backbones_alone():
    plain = RecommenderConfig()
    tuned = RecommenderConfig(
        model=ModelConfig(mask_prob=0.2, mask_last_prob=0.5),
        per_backbone={"bert4rec": {"training": {"loss": "ce", "batch_size": 32}}},
    )
    for backbone in ("sasrec", "gru4rec"):
        assert key(tuned, backbone, "id") == key(plain, backbone, "id")
    assert key(tuned, "bert4rec", "id") != key(plain, "bert4rec", "id")


def test_calibration_weights_retrain_only_calibrated_variants():
    plain = RecommenderConfig()
    tuned = RecommenderConfig(training=TrainingConfig(tau=2.0, alpha=0.1))
    assert key(tuned, "sasrec", "id") == key(plain, "sasrec", "id")
    assert key(tuned, "sasrec", "genair") != key(plain, "sasrec", "genair")


def test_pooling_split_retrains_only_the_half_variants():
    plain = RecommenderConfig()
    assert key(plain, "sasrec", "genair", input_dims=100) == key(plain, "sasrec", "genair")
    assert key(plain, "sasrec", "gen-only", input_dims=100) != key(plain, "sasrec", "gen-only")


def test_key_names_the_code_version_the_run_and_each_input_table():
    parts = key(RecommenderConfig(), "sasrec", "genair")
    assert parts[:4] == [TRAINING_VERSION, "sasrec", "genair", 44]
    assert set(parts[-1]) == {
        "sequences",
        "item_index",
        "eval_negatives",
        "item_embeddings",
        "cooccurrence",
    }
    assert set(key(RecommenderConfig(), "sasrec", "id")[-1]) == {
        "sequences",
        "item_index",
        "eval_negatives",
    }


def test_run_names_carry_each_backbones_loss():
    config = RecommenderConfig(per_backbone={"bert4rec": {"training": {"loss": "ce"}}})
    assert RunSpec.of(config, "bert4rec", "id", 44).name == "bert4rec-id-ce-s44"
    assert RunSpec.of(config, "sasrec", "id", 44).name == "sasrec-id-bce-s44"


def test_a_tag_names_the_runs_without_changing_their_keys():
    tagged = RecommenderConfig(tag="alpha-1e-3")
    assert RunSpec.of(tagged, "sasrec", "genair", 44).name == "sasrec-genair-bce-s44-alpha-1e-3"
    assert key(tagged, "sasrec", "genair") == key(RecommenderConfig(), "sasrec", "genair")
    for bad in ("Alpha", "-x", "a/b", "x" * 41):
        with pytest.raises(ValueError, match="tag"):
            RecommenderConfig(tag=bad)
