"""Top-K unseen candidates: exact against a brute-force reference, FAISS against exact."""

import numpy as np
import pytest
import torch

from genair_core.config import ModelConfig
from genair_core.recommenders.models import build_model
from genair_core.recommenders.ranking import (
    TIE_MARGIN,
    ApproximateTopK,
    _drop_seen,
    choose_search,
    recall_at_k,
    top_k_unseen,
)


def reference(users, items, ptr, seen, k):
    """Brute force in float64: each user's scores, seen set to -inf, ordered by (score desc,
    index asc), padded with (-1, -inf)."""
    users, items = np.asarray(users, np.float64), np.asarray(items, np.float64)
    index = np.full((len(users), k), -1, np.int64)
    scores = np.full((len(users), k), -np.inf, np.float32)
    for u, vector in enumerate(users):
        row = items @ vector
        row[seen[ptr[u] : ptr[u + 1]]] = -np.inf
        order = [i for i in np.lexsort((np.arange(row.size), -row)) if row[i] > -np.inf][:k]
        index[u, : len(order)] = order
        scores[u, : len(order)] = row[order]
    return index, scores


def csr(lists):
    ptr = np.zeros(len(lists) + 1, np.int64)
    ptr[1:] = np.cumsum([len(x) for x in lists])
    flat = np.concatenate([np.asarray(x, np.int64) for x in lists]) if lists else np.zeros(0)
    return ptr, flat.astype(np.int64)


def random_seen(rng, n_users, n_items, most):
    """Per-user seen lists of 0..most indices, with repeats."""
    lists = [rng.integers(0, n_items, rng.integers(0, most + 1)) for _ in range(n_users)]
    return csr(lists)


def integer_data(rng, n_users, n_items, dim, duplicates=0):
    """Small integers, so every inner product is exact in float32 (and bf16) whatever the summation
    order: ties are real ties. `duplicates` item rows are copies of earlier rows."""
    users = rng.integers(-3, 4, (n_users, dim)).astype(np.float32)
    items = rng.integers(-3, 4, (n_items, dim)).astype(np.float32)
    if duplicates:
        copies = rng.choice(n_items, duplicates, replace=False)
        items[copies] = items[rng.integers(0, n_items, duplicates)]
    return users, items


def test_exact_matches_brute_force_with_seen_repeats_and_padding():
    rng = np.random.default_rng(0)
    users = rng.normal(size=(40, 16)).astype(np.float32)
    items = rng.normal(size=(300, 16)).astype(np.float32)
    lists = [rng.integers(0, 300, rng.integers(0, 30)) for _ in range(38)]
    lists.append(np.concatenate([np.arange(296), np.arange(10)]))  # 4 unseen left, with repeats
    lists.append(np.arange(300))  # nothing left
    ptr, seen = csr(lists)
    index, scores = top_k_unseen(torch.from_numpy(users), torch.from_numpy(items), ptr, seen, 10)
    want_index, want_scores = reference(users, items, ptr, seen, 10)
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert index.dtype == np.int64
    assert scores.dtype == np.float32
    assert (index[-2, 4:] == -1).all()
    assert np.isneginf(scores[-2, 4:]).all()
    assert (index[-1] == -1).all()
    for u in range(len(lists)):
        assert not set(index[u]) & set(seen[ptr[u] : ptr[u + 1]].tolist())


def test_ties_follow_the_smaller_index():
    rng = np.random.default_rng(1)
    users, items = integer_data(rng, 64, 500, 6, duplicates=200)
    ptr, seen = random_seen(rng, 64, 500, 40)
    index, scores = top_k_unseen(torch.from_numpy(users), torch.from_numpy(items), ptr, seen, 25)
    want_index, want_scores = reference(users, items, ptr, seen, 25)
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_array_equal(scores, want_scores)
    runs = (np.diff(scores, axis=1) == 0) & (index[:, 1:] >= 0)
    assert runs.sum() > 100  # the data does hold many ties inside the lists


def test_a_tie_run_longer_than_the_margin_is_redone_from_the_full_row():
    items = np.ones((200, 4), np.float32)
    items[150] = 2  # one clear winner, then 199 items tied
    users = np.ones((3, 4), np.float32)
    ptr, seen = csr([[], [0, 1, 2, 150], [5, 5, 7]])
    k = 10
    assert k + TIE_MARGIN < 199
    index, scores = top_k_unseen(torch.from_numpy(users), torch.from_numpy(items), ptr, seen, k)
    assert index[0].tolist() == [150, *range(9)]
    assert index[1].tolist() == list(range(3, 13))
    assert index[2].tolist() == [150, 0, 1, 2, 3, 4, 6, 8, 9, 10]
    np.testing.assert_array_equal(index, reference(users, items, ptr, seen, k)[0])
    assert scores[0, 0] == 8
    assert (scores[0, 1:] == 4).all()


@pytest.mark.parametrize("k", [1, 7, 60])
def test_same_lists_for_every_batch_size(k):
    rng = np.random.default_rng(2)
    users, items = integer_data(rng, 50, 400, 5, duplicates=100)
    ptr, seen = random_seen(rng, 50, 400, 80)
    args = (torch.from_numpy(users), torch.from_numpy(items), ptr, seen, k)
    runs = [top_k_unseen(*args, batch_size=size) for size in (1, 3, 16, 1024)]
    for index, scores in runs[1:]:
        np.testing.assert_array_equal(index, runs[0][0])
        np.testing.assert_array_equal(scores, runs[0][1])
    np.testing.assert_array_equal(runs[0][0], reference(users, items, ptr, seen, k)[0])


def test_bf16_items_score_in_bf16_and_return_float32():
    rng = np.random.default_rng(3)
    users, items = integer_data(rng, 20, 300, 8, duplicates=50)  # sums below 256: exact in bf16
    ptr, seen = random_seen(rng, 20, 300, 20)
    index, scores = top_k_unseen(
        torch.from_numpy(users), torch.from_numpy(items).to(torch.bfloat16), ptr, seen, 12
    )
    want_index, want_scores = reference(users, items, ptr, seen, 12)
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_array_equal(scores, want_scores)
    assert scores.dtype == np.float32


def test_more_asked_than_candidates_pads():
    users = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0]])
    ptr, seen = csr([[2]])
    index, scores = top_k_unseen(users, items, ptr, seen, 5)
    assert index.tolist() == [[1, 0, -1, -1, -1]]
    assert scores[0, :2].tolist() == [2.0, 0.0]
    assert np.isneginf(scores[0, 2:]).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(k=0), "k must be >= 1"),
        (dict(seen_items=np.array([0, 9])), "candidate indices in 0..4"),
        (dict(seen_items=np.array([-1, 0])), "candidate indices"),
        (dict(seen_ptr=np.array([0, 2])), r"seen_ptr must be \(3,\)"),
        (dict(seen_ptr=np.array([0, 2, 1])), "non-decreasing"),
        (dict(seen_items=np.array([0.0, 1.0])), "integers"),
        (dict(user_vectors=torch.ones(2, 4)), r"user_vectors must be \(users, 3\)"),
        (dict(items=torch.tensor([[1.0, float("nan"), 0.0]] * 5)), "items: 5 rows hold NaN"),
    ],
)
def test_bad_input_is_named(change, message):
    args = dict(
        user_vectors=torch.ones(2, 3),
        items=torch.ones(5, 3),
        seen_ptr=np.array([0, 1, 2]),
        seen_items=np.array([0, 1]),
        k=2,
    )
    args.update(change)
    with pytest.raises(ValueError, match=message):
        top_k_unseen(**args)
    if "items" not in change:
        items = args.pop("items")
        with pytest.raises(ValueError, match=message):
            ApproximateTopK(items, m=8).search(**args)


def served_vectors(n_items, n_users, seed):
    """(items (n_items, 32), users (n_users, 32)) as the pipeline makes them, in small: an
    anisotropic Gaussian mixture (64-d, 50 centres, per-dimension scales decaying as PCA
    components do, per-centre spreads log-normal) through a randomly initialised SASRec's adapter
    for the items, and its forward pass over random 20-item histories for the users.

    User vectors matter: against isotropic random queries the same items give HNSW a recall@10
    of only 0.86 at ef_search 128 (0.94 at 512), since such queries reach items a backbone's
    outputs never point at."""
    gen = torch.Generator().manual_seed(seed)
    scale = (torch.arange(64) + 1.0) ** -0.5
    centres = torch.randn(50, 64, generator=gen) * scale
    spread = torch.exp(torch.randn(50, 1, generator=gen) * 0.5) * 0.5
    which = torch.randint(0, 50, (n_items,), generator=gen)
    vectors = centres[which] + torch.randn(n_items, 64, generator=gen) * scale * spread[which]
    torch.manual_seed(seed)
    table = torch.cat([torch.zeros(1, 64), vectors])
    config = ModelConfig(hidden=32, n_layers=1)
    model = build_model("sasrec", "genair", config, n_items, table, input_dims=32).eval()
    with torch.inference_mode():
        items = model.encoder.all_items()[1:].numpy().copy()
        history = torch.randint(1, n_items + 1, (n_users, 20), generator=gen)
        users = model.user_vectors(history).numpy()
    return items, users


def test_faiss_recall_against_exact_with_seen_filtered():
    rng = np.random.default_rng(4)
    items, users = served_vectors(20_000, 500, seed=4)
    exact_top, _ = top_k_unseen(
        torch.from_numpy(users), torch.from_numpy(items), *csr([[]] * 500), 30
    )
    # A trained model scores a user's own items high: half of each user's seen items come from
    # the top of its exact ranking, the rest at random.
    lists = [
        np.concatenate([exact_top[u, rng.integers(0, 30, 15)], rng.integers(0, 20_000, 30)])
        for u in range(500)
    ]
    ptr, seen = csr(lists)
    want, _ = top_k_unseen(torch.from_numpy(users), torch.from_numpy(items), ptr, seen, 10)
    search = ApproximateTopK(items, threads=2)
    got, scores = search.search(torch.from_numpy(users), ptr, seen, 10, batch_size=64)
    recall = recall_at_k(got, want, 10)
    assert recall >= 0.95, recall
    for u in range(500):
        assert not set(got[u]) & set(lists[u].tolist())
    assert (got >= 0).all()
    assert (np.diff(scores, axis=1) <= 0).all()
    np.testing.assert_allclose(
        scores, np.einsum("uh,ukh->uk", users, items[got]), rtol=1e-4, atol=1e-4
    )


def test_faiss_pads_when_fewer_unseen_than_k():
    rng = np.random.default_rng(5)
    items = rng.normal(size=(30, 8)).astype(np.float32)
    users = rng.normal(size=(2, 8)).astype(np.float32)
    ptr, seen = csr([np.arange(25), np.arange(30)])
    index, scores = ApproximateTopK(items, m=4).search(users, ptr, seen, 10)
    assert sorted(index[0, :5].tolist()) == [25, 26, 27, 28, 29]
    assert (index[0, 5:] == -1).all()
    assert (index[1] == -1).all()
    assert np.isneginf(scores[0, 5:]).all()


def test_faiss_results_are_ordered_by_score_then_index_without_seen_or_missing():
    found = np.array([[4, 2, 9, -1, 7], [3, 1, 0, 8, 6]])
    found_scores = np.array([[5.0, 5.0, 5.0, -3.4e38, 1.0], [2.0, 2.0, 1.0, 1.0, 1.0]], np.float32)
    users = np.array([0, 1])
    ptr, seen = csr([[9, 9], [3, 0]])
    index, scores = _drop_seen(found, found_scores, users, ptr, seen, n_items=10, k=4)
    assert index.tolist() == [[2, 4, 7, -1], [1, 6, 8, -1]]
    assert scores[:, :3].tolist() == [[5.0, 5.0, 1.0], [2.0, 1.0, 1.0]]


def test_choose_search():
    assert choose_search(100, 100) == "exact"
    assert choose_search(101, 100) == "faiss"
    with pytest.raises(ValueError, match="must be >= 0"):
        choose_search(-1, 100)


def test_recall_counts_shared_items_over_the_exact_lists():
    exact = np.array([[1, 2, 3, -1], [4, 5, 6, 7]])
    found = np.array([[3, 9, 1, -1], [7, 6, 5, 4]])
    assert recall_at_k(found, exact, 3) == pytest.approx(2 / 3)
    assert recall_at_k(found, exact, 4) == pytest.approx((2 / 3 + 1) / 2)  # -1 is no item
    with pytest.raises(ValueError, match="same shape"):
        recall_at_k(found[:1], exact, 3)
