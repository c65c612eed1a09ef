"""The trainer on small synthetic sequences: determinism, resume after a crash, checkpoints,
batching and negative sampling."""

import json
import threading

import numpy as np
import pyarrow as pa
import pytest
import torch

from genair_core.config import ModelConfig, TrainingConfig
from genair_core.data.sequences import UserSequences
from genair_core.losses import CooccurrenceLookup
from genair_core.metrics import full_ranks, sample_negatives, sampled_ranks
from genair_core.recommenders.experiment import resume_from
from genair_core.recommenders.models import build_model
from genair_core.recommenders.training import (
    FitSettings,
    TrainingStopped,
    _sample_negatives,
    _user_item_keys,
    evaluate,
    fit,
    length_batches,
    rank_users,
)
from storage.checkpoints import RunCheckpoints

N_ITEMS = 30


def synthetic_sequences(n_users=40, seed=0):
    """Users walk through items in steps of 1 or 2 (a learnable next-item pattern)."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        length = int(rng.integers(5, 15))
        item = int(rng.integers(1, N_ITEMS + 1))
        for position in range(length):
            split = (
                "test" if position == length - 1 else "valid" if position == length - 2 else "train"
            )
            rows.append((user, position, item, split))
            item = (item + int(rng.integers(1, 3)) - 1) % N_ITEMS + 1
    user, position, item, split = zip(*rows, strict=True)
    table = pa.table(
        {
            "user_idx": pa.array(user, pa.int32()),
            "position": pa.array(position, pa.int32()),
            "item_idx": pa.array(item, pa.int32()),
            "split": pa.array(split),
        }
    )
    return UserSequences.from_table(table, N_ITEMS)


@pytest.fixture(scope="module")
def data():
    return synthetic_sequences()


@pytest.fixture(scope="module")
def negatives(data):
    ptr, items = data.all_items_csr()
    return sample_negatives(ptr, items, N_ITEMS, n=10, seed=0)


def new_model(backbone="sasrec", variant="id", seed=3):
    torch.manual_seed(seed)
    config = ModelConfig(hidden=16, max_len=8, dropout=0.2)
    vectors = torch.randn(N_ITEMS + 1, 6)
    vectors[0] = 0
    return build_model(backbone, variant, config, N_ITEMS, vectors, input_dims=3)


def lookup():
    i = np.array([1, 2, 3], dtype=np.int32)
    j = np.array([2, 3, 4], dtype=np.int32)
    return CooccurrenceLookup.from_pairs(i, j, np.array([1.0, 0.5, 0.25], np.float32), N_ITEMS)


CONFIG = TrainingConfig(batch_size=16, max_epochs=4, patience=10, alpha=0.1)
SEED = 7
SETTINGS = FitSettings(CONFIG, SEED)


class AfterEachEpoch(RunCheckpoints):
    """RunCheckpoints that call `after(epoch)` once an epoch's checkpoint is saved: where a run
    goes on, or is killed, after the epoch."""

    def __init__(self, folder, after):
        super().__init__(folder)
        self.after = after

    def save(self, state, *tensors):
        super().save(state, *tensors)
        self.after(state["epoch"])


def test_training_is_deterministic_for_a_seed(data, tmp_path):
    a = fit(new_model(), data, SETTINGS, RunCheckpoints(tmp_path / "a"))
    b = fit(new_model(), data, SETTINGS, RunCheckpoints(tmp_path / "b"))
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in a.history]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in b.history]
    c = fit(new_model(), data, FitSettings(CONFIG, seed=8), RunCheckpoints(tmp_path / "c"))
    assert [e["train_loss"] for e in c.history] != [e["train_loss"] for e in a.history]


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize(
    ("backbone", "variant"), [("sasrec", "id"), ("bert4rec", "genair"), ("gru4rec", "llm")]
)
def test_resume_after_a_crash_gives_the_same_final_metrics(
    data, negatives, tmp_path, backbone, variant
):
    calibrated = variant == "genair"
    settings = FitSettings(CONFIG, SEED, calibrated=calibrated)
    kwargs = {"lookup": lookup()} if calibrated else {}
    whole = new_model(backbone, variant)
    fit(whole, data, settings, RunCheckpoints(tmp_path / "whole"), **kwargs)
    expected = evaluate(whole, data, negatives)

    def crash_after_two(epoch):
        if epoch == 2:
            raise Crash("killed")

    crashing = AfterEachEpoch(tmp_path / "crashed", crash_after_two)
    with pytest.raises(Crash):
        fit(new_model(backbone, variant), data, settings, crashing, **kwargs)
    epochs_seen = []
    resumed = new_model(backbone, variant, seed=99)  # different init: the checkpoint must win
    checkpoints = AfterEachEpoch(tmp_path / "crashed", epochs_seen.append)
    state = fit(resumed, data, settings, checkpoints, **kwargs)
    assert epochs_seen == [3, 4]  # epochs 1-2 are not redone
    assert state.epoch == 4
    got = evaluate(resumed, data, negatives)
    np.testing.assert_array_equal(got.full, expected.full)
    np.testing.assert_array_equal(got.sampled, expected.sampled)


def test_a_set_stop_event_ends_the_fit_at_the_next_batch_and_the_rerun_resumes(data, tmp_path):
    stop = threading.Event()
    stopping = AfterEachEpoch(tmp_path / "run", lambda epoch: epoch == 2 and stop.set())
    with pytest.raises(TrainingStopped, match="epoch 3"):
        fit(new_model(), data, SETTINGS, stopping, stop=stop)
    assert stopping.load()[0]["epoch"] == 2  # the stopped epoch left nothing behind
    epochs_seen = []
    fit(new_model(), data, SETTINGS, AfterEachEpoch(tmp_path / "run", epochs_seen.append))
    assert epochs_seen == [3, 4]


def test_checkpoints_are_safetensors_and_json_only(data, tmp_path):
    checkpoints = RunCheckpoints(tmp_path / "run")
    fit(new_model(), data, SETTINGS, checkpoints)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == sorted(
        [
            "state.json",
            "epoch-0004.safetensors",
            "epoch-0004.optim.safetensors",
            json.loads((tmp_path / "run" / "state.json").read_text())["best"],
        ]
    )
    for path in (tmp_path / "run").glob("*.safetensors"):
        assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    state, weights, optimizer = checkpoints.load()
    assert state["epoch"] == 4
    assert len(state["history"]) == 4
    assert set(weights) == set(new_model().state_dict())
    assert optimizer["state"]
    assert isinstance(optimizer["param_groups"][0]["betas"], tuple)


def test_a_forced_rerun_clears_a_finished_run_but_resumes_an_unfinished_one(data, tmp_path):
    finished = RunCheckpoints(tmp_path / "finished")
    fit(new_model(), data, SETTINGS, finished)
    assert resume_from(finished, CONFIG, restart=False) == 4
    with finished.exclusive():  # the task holds the run's lock while it clears the run
        assert resume_from(finished, CONFIG, restart=True) == 0
        assert [p.name for p in finished.folder.iterdir()] == [".lock"]
    assert finished.load() is None

    unfinished = RunCheckpoints(tmp_path / "unfinished")
    two_epochs = FitSettings(CONFIG.model_copy(update={"max_epochs": 2}), SEED)
    fit(new_model(), data, two_epochs, unfinished)
    assert resume_from(unfinished, CONFIG, restart=True) == 2


def test_early_stopping_keeps_the_best_epoch(data, tmp_path):
    config = TrainingConfig(batch_size=16, max_epochs=30, patience=2, lr=0.05)
    model = new_model()
    state = fit(model, data, FitSettings(config, seed=1), RunCheckpoints(tmp_path / "run"))
    assert state.stopped_early
    assert state.epoch == state.best_epoch + 2
    best = max(e["valid_ndcg@10"] for e in state.history)
    assert state.best_score == best
    assert state.history[state.best_epoch - 1]["valid_ndcg@10"] == best


def test_calibrated_variant_needs_the_cooccurrence_lookup(data, tmp_path):
    with pytest.raises(ValueError, match="co-occurrence"):
        fit(
            new_model(variant="genair"),
            data,
            FitSettings(CONFIG, SEED, calibrated=True),
            RunCheckpoints(tmp_path),
        )


def test_length_batches_cover_every_row_once_with_similar_lengths():
    lengths = np.array([3, 50, 4, 48, 5, 52, 3, 49])
    batches = length_batches(lengths, 4, jitter=0.0, generator=torch.Generator().manual_seed(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(8))
    assert sorted(sorted(lengths[b].tolist()) for b in batches) == [[3, 3, 4, 5], [48, 49, 50, 52]]
    jittered = length_batches(lengths, 4, 0.5, torch.Generator().manual_seed(0))
    assert sorted(np.concatenate(jittered).tolist()) == list(range(8))


def test_sampled_training_negatives_avoid_the_users_items(data):
    keys = _user_item_keys(data, torch.device("cpu"))
    users = torch.arange(data.n_users).repeat_interleave(50)
    drawn = _sample_negatives(users, N_ITEMS, keys, torch.Generator().manual_seed(0))
    for user, item in zip(users.tolist(), drawn.tolist(), strict=True):
        train = data.items[data.ptr[user] : data.ptr[user] + data.n_train[user]]
        assert item not in train
        assert 1 <= item <= N_ITEMS


def test_training_beats_an_untrained_model_on_a_learnable_pattern(data, negatives, tmp_path):
    untrained = evaluate(new_model(), data, negatives)
    model = new_model()
    fit(
        model,
        data,
        FitSettings(TrainingConfig(batch_size=16, max_epochs=30, lr=0.01), seed=1),
        RunCheckpoints(tmp_path),
    )
    trained = evaluate(model, data, negatives)
    assert (trained.full < 10).mean() > (untrained.full < 10).mean() + 0.2


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec", "gru4rec"])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_ranking_in_batches_of_similar_length_gives_the_ranks_of_max_len_windows(
    data, negatives, backbone, split
):
    model = new_model(backbone)
    model.eval()
    rows = np.flatnonzero(data.held_out)[::-1].copy()  # not in length order
    full, sampled = rank_users(model, data, rows, split, 7, "cpu", negatives[rows])

    with torch.no_grad():  # every user padded to max_len, in the given order
        history = torch.from_numpy(data.history(rows, split, model.config.max_len))
        scores = model.user_vectors(history) @ model.encoder.all_items().T
        targets = torch.from_numpy(data.targets(rows, split))
        ptr, masked = data.history_csr(rows, split)
        expected = full_ranks(scores, targets, torch.from_numpy(ptr), torch.from_numpy(masked))
        negative = torch.from_numpy(negatives[rows]).long()
        target_scores = scores.gather(1, targets.unsqueeze(1)).squeeze(1)
        expected_sampled = sampled_ranks(target_scores, scores.gather(1, negative))
    assert data.history_lengths(rows, split).max() > model.config.max_len > 5
    np.testing.assert_array_equal(full, expected.numpy())
    np.testing.assert_array_equal(sampled, expected_sampled.numpy())
