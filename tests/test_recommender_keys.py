"""Which settings enter a recommender run's cache key (a changed key retrains the run)."""

import pytest

from genair_core.config import (
    EvaluationConfig,
    ModelConfig,
    RecommenderConfig,
    TrainingConfig,
)
from genair_core.recommenders.run_spec import TRAINING_VERSION, RunSpec

RUNS = [(b, v) for b in ("sasrec", "bert4rec", "gru4rec") for v in ("id", "genair", "gen-only")]
# The code defaults before they became the default run's: these tests' run names and keys.
REFERENCE_TRAINING = {"loss": "bce", "batch_size": 128, "max_epochs": 50, "patience": 20}


def reference(
    model: dict | None = None, training: dict | None = None, **rest: object
) -> RecommenderConfig:
    """The reference's settings (BCE, batch 128, 50 epochs, no per-backbone settings), with
    `model`, `training` and any other RecommenderConfig field changed."""
    return RecommenderConfig(
        **{
            "backbones": ["sasrec", "bert4rec", "gru4rec"],
            "variants": ["id", "llm", "genair", "input-only", "gen-only"],
            "seeds": [44, 45, 46],
            "workers": 1,
            "per_backbone": {},
            **rest,
            "model": ModelConfig(**(model or {})),
            "training": TrainingConfig(**{**REFERENCE_TRAINING, **(training or {})}),
        }
    )


def key(config: RecommenderConfig, backbone: str, variant: str, input_dims: int = 384) -> list:
    run = RunSpec.of(config, backbone, variant, seed=44)
    return run.cache_key(input_dims, {name: f"sha-{name}" for name in run.tables})


@pytest.mark.parametrize(("backbone", "variant"), RUNS)
def test_grid_workers_device_and_evaluation_settings_do_not_retrain(backbone, variant):
    plain = reference()
    other = reference(
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
    plain = key(reference(), backbone, variant)
    for changed in (
        reference(model={"hidden": 64}),
        reference(model={"dropout": 0.1}),
        reference(training={"loss": "ce"}),
        reference(training={"max_epochs": 3}),
    ):
        assert key(changed, backbone, variant) != plain


def test_bert4rec_settings_leave_the_other_backbones_alone():
    plain = reference()
    tuned = reference(
        model={"mask_prob": 0.2, "mask_last_prob": 0.5},
        per_backbone={"bert4rec": {"training": {"loss": "ce", "batch_size": 32}}},
    )
    for backbone in ("sasrec", "gru4rec"):
        assert key(tuned, backbone, "id") == key(plain, backbone, "id")
    assert key(tuned, "bert4rec", "id") != key(plain, "bert4rec", "id")


def test_calibration_weights_retrain_only_calibrated_variants():
    plain = reference()
    tuned = reference(training={"tau": 2.0, "alpha": 0.1})
    assert key(tuned, "sasrec", "id") == key(plain, "sasrec", "id")
    assert key(tuned, "sasrec", "genair") != key(plain, "sasrec", "genair")


def test_pooling_split_retrains_only_the_half_variants():
    plain = reference()
    assert key(plain, "sasrec", "genair", input_dims=100) == key(plain, "sasrec", "genair")
    assert key(plain, "sasrec", "gen-only", input_dims=100) != key(plain, "sasrec", "gen-only")


def test_key_names_the_code_version_the_run_and_each_input_table():
    parts = key(reference(), "sasrec", "genair")
    assert parts[:4] == [TRAINING_VERSION, "sasrec", "genair", 44]
    assert set(parts[-1]) == {
        "sequences",
        "item_index",
        "eval_negatives",
        "item_embeddings",
        "cooccurrence",
    }
    assert set(key(reference(), "sasrec", "id")[-1]) == {
        "sequences",
        "item_index",
        "eval_negatives",
    }


def test_run_names_carry_each_backbones_loss():
    config = reference(per_backbone={"bert4rec": {"training": {"loss": "ce"}}})
    assert RunSpec.of(config, "bert4rec", "id", 44).name == "bert4rec-id-ce-s44"
    assert RunSpec.of(config, "sasrec", "id", 44).name == "sasrec-id-bce-s44"


def test_a_tag_names_the_runs_without_changing_their_keys():
    tagged = reference(tag="alpha-1e-3")
    assert RunSpec.of(tagged, "sasrec", "genair", 44).name == "sasrec-genair-bce-s44-alpha-1e-3"
    assert key(tagged, "sasrec", "genair") == key(reference(), "sasrec", "genair")
    for bad in ("Alpha", "-x", "a/b", "x" * 41):
        with pytest.raises(ValueError, match="tag"):
            RecommenderConfig(tag=bad)


def test_the_default_run_compares_id_and_genair_under_softmax_ce():
    names = [run.name for run in RunSpec.grid(RecommenderConfig())]
    assert names == [
        "sasrec-id-ce-s44",
        "sasrec-genair-ce-s44",
        "gru4rec-id-ce-s44",
        "gru4rec-genair-ce-s44",
    ]
