"""Ranking metrics on hand-made scores, ranks and counts whose answers are worked out here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genair_core.metrics import (
    KS,
    full_ranks,
    group_metrics,
    rank_metrics,
    sample_negatives,
    sampled_ranks,
    short_history,
    tail_items,
)


def csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.cumsum([0] + [len(x) for x in lists]).astype(np.int64)
    items = np.array([i for x in lists for i in x], dtype=np.int64)
    return ptr, items


def ranks_of(scores, targets, histories, device="cpu"):
    ptr, items = csr(histories)
    return full_ranks(
        torch.tensor(scores, dtype=torch.float32, device=device),
        torch.tensor(targets, device=device),
        torch.from_numpy(ptr).to(device),
        torch.from_numpy(items).to(device),
    )


# n_items = 5; column 0 is padding.
HAND_SCORES = [
    # target 3 (0.7); item 2 (0.9) is history, so masked; item 4 ties at 0.7 and counts -> 1
    [9.0, 0.5, 0.9, 0.7, 0.7, 0.1],
    # target 2 (0.8) is itself in the history (a repeat): still ranked; item 5 masked -> 0
    [0.0, 0.2, 0.8, 0.3, 0.1, 0.9],
    # no history, target 1 lowest of the 5 real items; the padding's 100 never counts -> 4
    [100.0, 0.1, 0.2, 0.3, 0.4, 0.5],
    # everything ties: item 1 masked, items 2, 3, 5 tie with the target 4 -> 3
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
]
HAND_TARGETS = [3, 2, 1, 4]
HAND_HISTORIES = [[2], [2, 5], [], [1]]


def test_full_ranks_by_hand():
    got = ranks_of(HAND_SCORES, HAND_TARGETS, HAND_HISTORIES)
    assert got.dtype == torch.int64
    assert got.tolist() == [1, 0, 4, 3]


def test_full_ranks_without_masking_counts_the_history():
    got = ranks_of(HAND_SCORES, HAND_TARGETS, [[], [], [], []])
    assert got.tolist() == [2, 1, 4, 4]


def test_full_ranks_nan_counts_against_the_model():
    scores = [[0.0, float("nan"), 0.5, 0.1], [0.0, 0.3, float("nan"), 0.2]]
    # user 0: NaN candidate counts, 0.1 does not -> 1; user 1: NaN target, both others count -> 2
    assert ranks_of(scores, [2, 2], [[], []]).tolist() == [1, 2]


def test_full_ranks_matches_a_loop_on_random_data():
    rng = np.random.default_rng(3)
    n_users, n_items = 40, 30
    # Rounded scores make ties common.
    scores = np.round(rng.normal(size=(n_users, n_items + 1)), 1)
    targets = rng.integers(1, n_items + 1, size=n_users)
    histories = [
        rng.choice(np.arange(1, n_items + 1), size=rng.integers(0, 10), replace=False).tolist()
        for _ in range(n_users)
    ]
    expected = []
    for u in range(n_users):
        t = targets[u]
        others = set(range(1, n_items + 1)) - set(histories[u]) - {t}
        expected.append(sum(scores[u, i] >= scores[u, t] for i in others))
    assert ranks_of(scores, targets, histories).tolist() == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_full_ranks_on_cuda():
    got = ranks_of(HAND_SCORES, HAND_TARGETS, HAND_HISTORIES, device="cuda")
    assert got.device.type == "cuda"
    assert got.cpu().tolist() == [1, 0, 4, 3]


def test_sampled_ranks_by_hand():
    target = torch.tensor([0.5, 0.5, 0.1])
    negatives = torch.tensor([[0.1, 0.5, 0.9], [0.1, 0.2, 0.3], [0.2, 0.3, 0.4]])
    got = sampled_ranks(target, negatives)
    assert got.dtype == torch.int64
    assert got.tolist() == [2, 0, 3]  # the tie at 0.5 counts against the target


def test_rank_metrics_exact_values():
    got = rank_metrics(np.array([0, 1, 4, 5, 9, 10, 19, 20]))
    assert list(got) == ["hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20"]
    assert all(v.dtype == np.float64 for v in got.values())
    assert got["hr@5"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert got["hr@10"].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert got["hr@20"].tolist() == [1, 1, 1, 1, 1, 1, 1, 0]
    g = [1.0, 1 / math.log2(3), 1 / math.log2(6), 1 / math.log2(7), 1 / math.log2(11)]
    g += [1 / math.log2(12), 1 / math.log2(21)]
    np.testing.assert_allclose(got["ndcg@5"], [*g[:3], 0, 0, 0, 0, 0], rtol=1e-15)
    np.testing.assert_allclose(got["ndcg@10"], [*g[:5], 0, 0, 0], rtol=1e-15)
    np.testing.assert_allclose(got["ndcg@20"], [*g, 0], rtol=1e-15)
    assert got["ndcg@5"][1] == pytest.approx(0.6309297535714575)


def test_rank_metrics_custom_ks():
    assert list(rank_metrics(np.array([0]), ks=(1,))) == ["hr@1", "ndcg@1"]
    assert KS == (5, 10, 20)


N_ITEMS = 200
HISTORIES = [[1, 2, 3], [], list(range(1, 121)), [5, 5, 7], [200, 0]]


def test_sample_negatives_properties():
    ptr, items = csr(HISTORIES)
    neg = sample_negatives(ptr, items, N_ITEMS, n=50, seed=1)
    assert neg.shape == (5, 50)
    assert neg.dtype == np.int32
    for u, history in enumerate(HISTORIES):
        row = neg[u]
        assert len(set(row.tolist())) == 50
        assert row.min() >= 1
        assert row.max() <= N_ITEMS
        assert not set(row.tolist()) & set(history)


def test_sample_negatives_deterministic_per_seed_and_per_user():
    ptr, items = csr(HISTORIES)
    a = sample_negatives(ptr, items, N_ITEMS, n=50, seed=1)
    np.testing.assert_array_equal(a, sample_negatives(ptr, items, N_ITEMS, n=50, seed=1))
    b = sample_negatives(ptr, items, N_ITEMS, n=50, seed=2)
    assert (a != b).any(axis=1).all()

    # Users appended after the first four leave those rows alone.
    more = sample_negatives(*csr([*HISTORIES[:4], [9], [10, 11]]), N_ITEMS, n=50, seed=1)
    np.testing.assert_array_equal(more[:4], a[:4])
    fewer = sample_negatives(*csr(HISTORIES[:2]), N_ITEMS, n=50, seed=1)
    np.testing.assert_array_equal(fewer, a[:2])


@pytest.mark.parametrize(
    ("owned", "n"),
    [
        ([1, 2, 3, 4, 5], 3),  # few owned: rejection sampling
        (list(range(1, 16)), 3),  # most of the catalog owned: choice from the complement
    ],
)
def test_sample_negatives_is_uniform_over_candidates(owned, n):
    n_items, n_users = 20, 3000
    neg = sample_negatives(*csr([owned] * n_users), n_items, n=n, seed=0)
    counts = np.bincount(neg.ravel(), minlength=n_items + 1)
    candidates = sorted(set(range(1, n_items + 1)) - set(owned))
    assert counts[owned].sum() == 0
    p = n / len(candidates)
    expected, sd = n_users * p, math.sqrt(n_users * p * (1 - p))
    assert np.abs(counts[candidates] - expected).max() < 5 * sd


def test_sample_negatives_too_few_candidates_names_the_user():
    ptr, items = csr([[1], list(range(1, 9)), []])
    with pytest.raises(ValueError, match="user 1 has 2 candidate items"):
        sample_negatives(ptr, items, 10, n=3)
    # Exactly n candidates is enough: they are all drawn.
    neg = sample_negatives(*csr([list(range(1, 8))]), 10, n=3)
    assert sorted(neg[0].tolist()) == [8, 9, 10]


def test_tail_items_by_hand():
    # Total 20 (index 0 ignored), share 0.2 -> at most 4. Ascending: 2 (0), 3 (1), 5 (1), 6 (3),
    # 1 (5), 4 (10); cumulative 0, 1, 2, 5: the tail is {2, 3, 5}.
    counts = np.array([99, 5, 0, 1, 10, 1, 3])
    mask = tail_items(counts, share=0.2)
    assert mask.dtype == bool
    assert mask.tolist() == [False, False, True, True, False, True, False]


def test_tail_items_ties_split_by_index_and_edge_cases():
    # Items 1, 2, 3 all have 2 of 20; the budget 4 takes items 1 and 2 only.
    assert tail_items(np.array([0, 2, 2, 2, 14]), share=0.2).tolist() == [
        False,
        True,
        True,
        False,
        False,
    ]
    assert tail_items(np.array([0, 0, 0]), share=0.2).tolist() == [False, True, True]
    assert tail_items(np.array([0, 3, 1]), share=0.0).tolist() == [False, False, False]
    # 57 items with 1 of 100: exactly 57%, though 0.57 * 100 < 57 in floating point.
    counts = np.array([0] + [1] * 57 + [43])
    assert tail_items(counts, share=0.57)[1:58].all()
    assert not tail_items(counts, share=0.57)[58]


def test_short_history():
    mask, threshold = short_history(np.array([1, 2, 3, 10]))
    assert threshold == 2  # median 2.5
    assert mask.tolist() == [True, True, False, False]
    mask, threshold = short_history(np.array([5, 1, 3]))
    assert threshold == 3
    assert mask.tolist() == [False, True, True]


def test_group_metrics_with_an_empty_group():
    ranks = np.array([0, 3, 12])
    got = group_metrics(
        ranks, {"tail": np.array([True, False, True]), "none": np.zeros(3, dtype=bool)}
    )
    assert list(got) == ["all", "tail", "none"]
    assert got["all"]["users"] == 3
    assert got["all"]["hr@5"] == pytest.approx(2 / 3)
    assert got["all"]["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert got["all"]["hr@20"] == 1.0
    assert got["tail"]["users"] == 2
    assert got["tail"]["hr@10"] == 0.5
    assert got["tail"]["ndcg@20"] == pytest.approx((1 + 1 / math.log2(14)) / 2)
    assert got["none"]["users"] == 0
    assert all(math.isnan(v) for k, v in got["none"].items() if k != "users")


def test_group_metrics_rejects_bad_masks():
    with pytest.raises(ValueError, match="bool mask"):
        group_metrics(np.array([0, 1]), {"g": np.array([1, 0])})
    with pytest.raises(ValueError, match="reserved"):
        group_metrics(np.array([0, 1]), {"all": np.array([True, False])})
