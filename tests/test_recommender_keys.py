"""Which settings enter a recommender run's cache key (a changed key retrains the run)."""

from genair_core.config import RecommenderConfig, Settings
from tasks.recommenders import run_name, run_settings_key

# The key of every run finished before per-backbone settings existed; SASRec and GRU4Rec keys must
# keep exactly these so that those runs are not retrained.
KEYED_BEFORE = {
    "loss", "hidden", "max_len", "n_layers", "n_heads", "dropout", "mask_prob", "batch_size",
    "lr", "max_epochs", "patience", "tau", "alpha", "negatives", "negatives_seed", "tail_share",
    "workers",
}  # fmt: skip


def test_other_backbones_keys_ignore_bert4rec_settings():
    plain = RecommenderConfig()
    tuned = RecommenderConfig(
        mask_last_prob=0.5, per_backbone={"bert4rec": {"loss": "ce", "batch_size": 32}}
    )
    for backbone in ("sasrec", "gru4rec"):
        key = run_settings_key(tuned.for_backbone(backbone), backbone)
        assert set(key) == KEYED_BEFORE
        assert key == run_settings_key(plain.for_backbone(backbone), backbone)


def test_bert4rec_key_follows_its_own_settings():
    plain = RecommenderConfig()
    tuned = RecommenderConfig(per_backbone={"bert4rec": {"mask_last_prob": 0.5}})
    key = run_settings_key(tuned.for_backbone("bert4rec"), "bert4rec")
    assert key["mask_last_prob"] == 0.5
    assert key != run_settings_key(plain.for_backbone("bert4rec"), "bert4rec")


def test_run_names_carry_each_backbones_loss():
    settings = Settings(recommenders=RecommenderConfig(per_backbone={"bert4rec": {"loss": "ce"}}))
    assert run_name(settings, "bert4rec", "id", 44) == "bert4rec-id-ce-s44"
    assert run_name(settings, "sasrec", "id", 44) == "sasrec-id-bce-s44"
