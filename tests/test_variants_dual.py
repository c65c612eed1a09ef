"""The variants `genair-warm` (adapter from the calibration job) and `genair-id` (LLM view plus a
trainable ID per item): their encoders on tiny tensors, their cache keys, and one epoch of each
variant through the recommender task on a small generated dataset."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from prefect.logging import disable_run_logger
from small_dataset import write_small_dataset

from genair_core.config import CalibrationConfig, ModelConfig, RecommenderConfig
from genair_core.item_space.calibration import calibration_settings_id
from genair_core.losses import CooccurrenceLookup, calibration_loss
from genair_core.recommenders.models import VARIANTS, build_model
from genair_core.recommenders.models.item_encoders import AdapterEncoder, DualEncoder
from genair_core.recommenders.run_spec import RunSpec, WarmStart
from genair_core.report.results import variant_sort_key
from genair_core.tables import to_fixed_list
from storage.recommenders import read_calibration_adapter
from storage.store import Store
from tasks.calibration import calibrate_items
from tasks.cooccurrence import build_cooccurrence
from tasks.ingest import ingest_dataset
from tasks.preprocess import split_interactions
from tasks.recommenders import sample_eval_negatives, train_recommender
from tasks.settings import Settings, load_settings

N_ITEMS, DIM, HIDDEN = 6, 8, 4
COLD = 5  # an item that occurs in no training sequence


def frozen_vectors() -> torch.Tensor:
    vectors = torch.randn(N_ITEMS + 1, DIM, generator=torch.Generator().manual_seed(0))
    vectors[0] = 0
    return vectors


def dual_encoder() -> DualEncoder:
    trained = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    trained[COLD] = False
    torch.manual_seed(0)
    return DualEncoder(frozen_vectors(), HIDDEN, trained)


# -- genair-id ------------------------------------------------------------------------------------
def test_a_cold_item_is_its_llm_view_alone_and_its_id_never_moves():
    encoder = dual_encoder()
    llm_view = AdapterEncoder(frozen_vectors(), HIDDEN)
    llm_view.adapter.load_state_dict(encoder.adapter.state_dict())
    # The ID table starts at zero: the variant starts as genair.
    torch.testing.assert_close(encoder.all_items(), llm_view.all_items())

    optimizer = torch.optim.Adam(encoder.parameters(), lr=0.1)
    for _ in range(3):  # a softmax over all items reaches every row, the cold one included
        logits = torch.randn(5, HIDDEN) @ encoder.all_items().T
        loss = torch.nn.functional.cross_entropy(logits[:, 1:], torch.tensor([0, 1, 2, 3, 5]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    llm_view.adapter.load_state_dict(encoder.adapter.state_dict())
    assert torch.count_nonzero(encoder.ids.weight[COLD]) == 0
    items = torch.tensor([COLD, 1, 0])
    out = encoder(items)
    torch.testing.assert_close(out[0], llm_view(items)[0])
    torch.testing.assert_close(encoder.all_items()[COLD], llm_view.all_items()[COLD])
    assert not torch.allclose(out[1], llm_view(items)[1])  # a trained item has moved its ID
    assert torch.count_nonzero(out[2]) == 0  # padding


def test_gradients_reach_the_ids_and_the_adapter_but_not_the_frozen_table():
    encoder = dual_encoder()
    with torch.no_grad():
        encoder.ids.weight.normal_()  # off zero, so that the adapter's gradient is not the only one
    before = encoder.table.clone()
    encoder(torch.tensor([[1, 2, COLD, 0]])).sum().backward()
    assert "table" not in dict(encoder.named_parameters())
    assert encoder.table.grad is None
    grad = encoder.ids.weight.grad
    assert (grad[[1, 2]].abs().sum(1) > 0).all()
    assert torch.count_nonzero(grad[[0, COLD]]) == 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.adapter.parameters())
    torch.testing.assert_close(encoder.table, before)


def test_the_calibration_loss_sees_the_llm_view_only():
    encoder = dual_encoder()
    with torch.no_grad():
        encoder.ids.weight.normal_()
    items = torch.tensor([1, 2, 3, 4])
    llm_view = encoder.adapter(encoder.table[items])
    torch.testing.assert_close(encoder.adapt(items), llm_view)
    lookup = CooccurrenceLookup.from_pairs(
        np.array([1, 2]), np.array([2, 3]), np.array([1.0, 0.5], dtype=np.float32), N_ITEMS
    )
    loss = calibration_loss(encoder.adapt(items), lookup.pair_scores(items), tau=4.0)
    loss.backward()
    assert encoder.ids.weight.grad is None
    assert encoder.adapter[0].weight.grad.abs().sum() > 0


def test_genair_id_builds_for_every_backbone_with_its_training_items():
    trained = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    trained[COLD] = False
    config = ModelConfig(hidden=HIDDEN, max_len=5, dropout=0.0)
    for backbone in ("sasrec", "gru4rec", "bert4rec"):
        model = build_model(
            backbone,
            "genair-id",
            config,
            N_ITEMS,
            frozen_vectors(),
            input_dims=DIM // 2,
            trained_items=trained,
        )
        assert isinstance(model.encoder, DualEncoder)
        assert model.encoder.trained[COLD].item() == 0
        assert model(torch.tensor([[0, 1, 2, 3]])).shape == (1, 4, HIDDEN)


# -- genair-warm ----------------------------------------------------------------------------------
def calibration_weights(hidden: int = HIDDEN, dim: int = DIM) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    return AdapterEncoder(frozen_vectors()[:, :dim], hidden).adapter.state_dict()


def test_genair_warm_starts_from_the_calibration_weights():
    weights = calibration_weights()
    config = ModelConfig(hidden=HIDDEN, max_len=5)
    warm = {k: v.numpy() for k, v in weights.items()}
    model = build_model(
        "sasrec",
        "genair-warm",
        config,
        N_ITEMS,
        frozen_vectors(),
        input_dims=4,
        adapter_weights=warm,
    )
    for name, value in model.encoder.adapter.state_dict().items():
        torch.testing.assert_close(value, weights[name])
    cold = build_model("sasrec", "genair", config, N_ITEMS, frozen_vectors(), input_dims=4)
    assert not torch.equal(cold.encoder.adapter[0].weight, weights["0.weight"])
    with pytest.raises(ValueError, match="calibration adapter's weights"):
        build_model("sasrec", "genair-warm", config, N_ITEMS, frozen_vectors(), input_dims=4)


def test_an_adapter_of_another_shape_is_refused():
    config = ModelConfig(hidden=HIDDEN, max_len=5)
    wider = calibration_weights(hidden=HIDDEN * 2)
    with pytest.raises(ValueError, match=r"hidden size and input dimension must match"):
        build_model(
            "sasrec",
            "genair-warm",
            config,
            N_ITEMS,
            frozen_vectors(),
            input_dims=4,
            adapter_weights=wider,
        )


def test_different_hidden_sizes_are_one_error_naming_both_settings():
    run = RunSpec.of(RecommenderConfig(model=ModelConfig(hidden=64)), "sasrec", "genair-warm", 1)
    both = r"calibration.hidden is 128 and recommenders.model.hidden is 64"
    with pytest.raises(ValueError, match=both):
        run.check_warm_start(CalibrationConfig().hidden)
    RunSpec.of(RecommenderConfig(), "sasrec", "genair", 1).check_warm_start(64)  # not warm: fine


def keys(adapter: str) -> dict[str, list]:
    keyed = {}
    for variant in VARIANTS:
        run = RunSpec.of(RecommenderConfig(), "gru4rec", variant, seed=44)
        keyed[variant] = run.cache_key(384, {name: f"sha-{name}" for name in run.tables}, adapter)
    return keyed


def test_only_genair_warm_keys_carry_the_adapter():
    first, second = keys("v1:aaa"), keys("v2:bbb")
    assert first["genair-warm"] != second["genair-warm"]
    assert {v: k for v, k in first.items() if v != "genair-warm"} == {
        v: k for v, k in second.items() if v != "genair-warm"
    }
    assert len(first["genair"]) == 8  # the other variants' keys are as long as before
    warm = RunSpec.of(RecommenderConfig(), "sasrec", "genair-warm", 1)
    with pytest.raises(ValueError, match="calibration adapter"):
        warm.cache_key(384, dict.fromkeys(warm.tables, "x"))


def test_results_order_the_variants():
    shuffled = ["gen-only", "genair-id", "zeta", "input-only", "genair-warm", "id", "genair", "llm"]
    assert sorted(shuffled, key=variant_sort_key) == [
        "id", "llm", "genair", "genair-warm", "genair-id", "input-only", "gen-only", "zeta",
    ]  # fmt: skip


# -- every variant through the task ---------------------------------------------------------------
TINY = """
[pooling]
input_dims = 4
gen_dims = 4
[calibration]
hidden = 8
epochs = 2
pairs_per_epoch = 64
batch_size = 8
device = "cpu"
max_mean_cosine = 1.0
min_rank_share = 0.0
[recommenders]
backbones = ["sasrec"]
variants = ["id", "llm", "genair", "input-only", "gen-only"]
seeds = [3]
device = "cpu"
workers = 1
per_backbone = {}
[recommenders.model]
hidden = 8
max_len = 6
[recommenders.training]
loss = "ce"
max_epochs = 1
batch_size = 4
[recommenders.evaluation]
negatives = 2
"""


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    """10 items, 8 users with 6 each; random 8-d item vectors in place of the LLM stages; split,
    co-occurrence, calibration and negatives done."""
    folder = tmp_path_factory.mktemp("variants")
    config = write_small_dataset(folder)
    (folder / "catalog.csv").write_text(
        "item_id,title,genre\n" + "".join(f"i{i},Item {i},g{i % 3}\n" for i in range(10))
    )
    events = ["user_id,item_id,timestamp"]
    for user in range(8):
        events += [f"u{user},i{(user + 3 * step) % 10},{100 * user + step}" for step in range(6)]
    (folder / "events.csv").write_text("\n".join(events) + "\n")
    config.write_text(config.read_text().replace('root = "data"', f'root = "{folder / "data"}"'))
    config.write_text(config.read_text() + TINY)
    with pytest.MonkeyPatch.context() as patch, disable_run_logger():
        patch.chdir(folder)
        settings = load_settings(config)
        for step in (ingest_dataset, split_interactions, build_cooccurrence):
            step.fn(settings)
        write_item_vectors(Store(settings.storage.root), dim=8)
        calibrate_items.fn(settings)
        sample_eval_negatives.fn(settings)
    return settings


def write_item_vectors(store: Store, dim: int) -> None:
    ids = store.read_table("items", columns=["item_id"])["item_id"].to_pylist()
    vectors = np.random.default_rng(0).normal(size=(len(ids), dim)).astype(np.float32)
    constant = {"content_hash": "h", "model_id": "m", "prompt_version": "p", "settings_id": "s"}
    store.write_table(
        "item_embeddings",
        pa.table(
            {
                "item_id": ids,
                **{name: [value] * len(ids) for name, value in constant.items()},
                "basis_id": ["b"] * len(ids),
                "vector": to_fixed_list(vectors),
            }
        ),
    )


def train(settings: Settings, variant: str, backbone: str = "sasrec") -> dict[str, object]:
    with disable_run_logger():
        return train_recommender.fn(settings, backbone, variant, 3)


def test_every_variant_trains_an_epoch_and_a_new_calibration_retrains_genair_warm_only(settings):
    store = Store(settings.storage.root)
    for variant in VARIANTS:
        summary = train(settings, variant)
        assert summary["epochs"] == 1, variant
        run = RunSpec.of(settings.recommenders, "sasrec", variant, 3).name
        log = store.read_parts("training_log", run).to_pylist()
        assert len(log) == 1
        assert (log[0]["cal_loss"] != 0) == VARIANTS[variant].calibrated, variant
        assert store.read_parts("eval_ranks", run).num_rows > 0

    adapter = WarmStart.from_stored(
        *read_calibration_adapter(store, calibration_settings_id(settings.calibration))
    )
    run = RunSpec.of(settings.recommenders, "sasrec", "genair-warm", 3).name
    best = Path(store.best_weights_path(run))
    assert best.is_file()

    # Another calibration (here: another seed) is another adapter.
    recalibrated = settings.model_copy(
        update={"calibration": settings.calibration.model_copy(update={"seed": 1})}
    )
    with disable_run_logger():
        assert calibrate_items.fn(recalibrated)["decision"] == "trained"
    other = WarmStart.from_stored(
        *read_calibration_adapter(store, calibration_settings_id(recalibrated.calibration))
    )
    assert other.identity != adapter.identity
    retrained = {variant: not train(recalibrated, variant)["skipped"] for variant in VARIANTS}
    assert retrained == {variant: variant == "genair-warm" for variant in VARIANTS}


@pytest.mark.parametrize("backbone", ["gru4rec", "bert4rec"])
def test_the_new_variants_train_on_the_other_backbones(settings, backbone):
    store = Store(settings.storage.root)
    for variant in ("genair-warm", "genair-id"):
        assert train(settings, variant, backbone)["epochs"] == 1
        run = RunSpec.of(settings.recommenders, backbone, variant, 3).name
        assert store.read_parts("training_log", run).to_pylist()[0]["cal_loss"] != 0


def test_warm_start_without_a_stored_adapter_or_with_another_hidden_size(settings):
    elsewhere = settings.calibration.model_copy(update={"seed": 99})
    with pytest.raises(FileNotFoundError, match="run the calibrate stage first"):
        train(settings.model_copy(update={"calibration": elsewhere}), "genair-warm")
    wider = settings.calibration.model_copy(update={"hidden": 16})
    with pytest.raises(
        ValueError, match=r"calibration\.hidden is 16 and recommenders\.model\.hidden"
    ):
        train(settings.model_copy(update={"calibration": wider}), "genair-warm")
