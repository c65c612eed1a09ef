"""Calibration loss: the CSR pair lookup and the matmul loss against hand values and the loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import genair_core.losses as losses
from genair_core.losses import (
    CooccurrenceLookup,
    calibration_loss,
    calibration_loss_reference,
)

# Items 4, 7 and 9 of a 10-item catalog: s(4, 7) = 0.5, s(7, 9) = 1, (4, 9) never seen together.
# Item 2 co-occurs only with 5; items 1, 3, 6, 8 and 10 have no pair.
HAND_I = np.array([4, 7, 2], dtype=np.int32)
HAND_J = np.array([7, 9, 5], dtype=np.int32)
HAND_S = np.array([0.5, 1.0, 0.25], dtype=np.float32)
HAND_PAIRS = {(4, 7): 0.5, (7, 9): 1.0, (2, 5): 0.25}


@pytest.fixture
def hand_lookup() -> CooccurrenceLookup:
    return CooccurrenceLookup.from_pairs(HAND_I, HAND_J, HAND_S, n_items=10)


def random_table(n_items: int, n_pairs: int, seed: int) -> tuple[np.ndarray, ...]:
    """Distinct random pairs i < j with s in (0, 1]."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, n_items + 1, 3 * n_pairs)
    b = rng.integers(1, n_items + 1, 3 * n_pairs)
    a, b = np.minimum(a, b), np.maximum(a, b)
    key = np.unique((a * (n_items + 1) + b)[a < b])[:n_pairs]
    s = rng.uniform(0.01, 1.0, key.size).astype(np.float32)
    s[::7] = 1.0
    return key // (n_items + 1), key % (n_items + 1), s


def test_hand_worked_example(hand_lookup):
    # Items 4, 7, 9 with vectors (1, 0), (0, 1), (1, 1); normalised, the third is (1, 1)/√2.
    # ‖ẽ₄ − ẽ₇‖² = 2; ‖ẽ₄ − ẽ₉‖² = (1 − 1/√2)² + 1/2 = 2 − √2; ‖ẽ₇ − ẽ₉‖² = 2 − √2 likewise.
    # τ = 4: w(4, 7) = e^(−2), w(4, 9) = e^0 = 1, w(7, 9) = e^(−4). Each pair counts twice (i ≠ j
    # ordered), over n (n − 1) = 6.
    d_47, d_49, d_79 = 2.0, 2.0 - math.sqrt(2.0), 2.0 - math.sqrt(2.0)
    w_47, w_49, w_79 = math.exp(-4 * 0.5), math.exp(0.0), math.exp(-4 * 1.0)
    expected = -2.0 * (w_47 * d_47 + w_49 * d_49 + w_79 * d_79) / 6.0
    assert expected == pytest.approx(-0.289062, abs=1e-6)

    items = torch.tensor([4, 7, 9])
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    scores = hand_lookup.pair_scores(items)
    assert scores.tolist() == [[0.0, 0.5, 0.0], [0.5, 0.0, 1.0], [0.0, 1.0, 0.0]]
    assert calibration_loss(vectors, scores).item() == pytest.approx(expected, rel=1e-6)
    assert calibration_loss_reference(vectors, items, HAND_PAIRS).item() == pytest.approx(
        expected, rel=1e-6
    )

    # Same items in another order, vectors permuted with them: same loss.
    perm = [2, 0, 1]
    got = calibration_loss(vectors[perm], hand_lookup.pair_scores(items[perm]))
    assert got.item() == pytest.approx(expected, rel=1e-6)

    # τ = 0: every weight is 1.
    plain = -2.0 * (d_47 + d_49 + d_79) / 6.0
    assert calibration_loss(vectors, scores, tau=0.0).item() == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fast_path_matches_reference_loop(seed):
    n_items, n = 300, 50
    i, j, s = random_table(n_items, 4000, seed)
    lookup = CooccurrenceLookup.from_pairs(i, j, s, n_items)
    pairs = dict(zip(zip(i.tolist(), j.tolist(), strict=True), s.tolist(), strict=True))
    gen = torch.Generator().manual_seed(seed)
    items = torch.randperm(n_items, generator=gen)[:n] + 1
    vectors = torch.randn(n, 16, generator=gen)

    scores = lookup.pair_scores(items)
    expected_scores = torch.zeros(n, n)
    for a, x in enumerate(items.tolist()):
        for b, y in enumerate(items.tolist()):
            expected_scores[a, b] = pairs.get((min(x, y), max(x, y)), 0.0)
    assert torch.equal(scores, expected_scores)
    assert (scores > 0).any()

    for tau in (4.0, 1.0):
        fast = calibration_loss(vectors, scores, tau=tau)
        ref = calibration_loss_reference(vectors, items, pairs, tau=tau)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)


def test_pair_scores_symmetric_with_zero_diagonal():
    i, j, s = random_table(200, 3000, seed=5)
    lookup = CooccurrenceLookup.from_pairs(i, j, s, 200)
    scores = lookup.pair_scores(torch.randperm(200)[:80] + 1)
    assert scores.dtype == torch.float32
    assert torch.equal(scores, scores.T)
    assert torch.equal(scores.diagonal(), torch.zeros(80))


def test_pair_scores_known_unseen_and_pairless_items(hand_lookup):
    # 3 and 10 have no pair at all; 2 has one, with 5, which is not in the batch.
    items = torch.tensor([9, 3, 2, 4, 10, 7])
    scores = hand_lookup.pair_scores(items)
    expected = torch.zeros(6, 6)
    expected[0, 5] = expected[5, 0] = 1.0  # (7, 9)
    expected[3, 5] = expected[5, 3] = 0.5  # (4, 7)
    assert torch.equal(scores, expected)
    assert torch.equal(
        hand_lookup.pair_scores(torch.tensor([2, 5])), torch.tensor([[0, 0.25], [0.25, 0]])
    )


def test_items_absent_from_the_table():
    # No pair at all, or a batch of items none of which has a pair: all zeros, loss with w = 1.
    empty = CooccurrenceLookup.from_pairs(
        np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32), n_items=5
    )
    assert empty.n_pairs == 0
    assert torch.equal(empty.pair_scores(torch.tensor([5, 1, 3])), torch.zeros(3, 3))
    lookup = CooccurrenceLookup.from_pairs(HAND_I, HAND_J, HAND_S, n_items=10)
    scores = lookup.pair_scores(torch.tensor([1, 8, 10]))
    assert torch.equal(scores, torch.zeros(3, 3))
    vectors = torch.randn(3, 4)
    torch.testing.assert_close(
        calibration_loss(vectors, scores), calibration_loss(vectors, scores, tau=0.0)
    )


def test_pair_scores_edge_cases(hand_lookup):
    assert hand_lookup.pair_scores(torch.tensor([], dtype=torch.int64)).shape == (0, 0)
    assert torch.equal(hand_lookup.pair_scores(torch.tensor([7])), torch.zeros(1, 1))
    assert torch.equal(
        hand_lookup.pair_scores(torch.tensor([4, 7], dtype=torch.int32)),
        torch.tensor([[0.0, 0.5], [0.5, 0.0]]),
    )
    with pytest.raises(ValueError, match="distinct"):
        hand_lookup.pair_scores(torch.tensor([4, 7, 4]))
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        hand_lookup.pair_scores(torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        hand_lookup.pair_scores(torch.tensor([11]))
    with pytest.raises(ValueError, match="1-D integer"):
        hand_lookup.pair_scores(torch.tensor([4.0, 7.0]))


def test_gradients_flow(hand_lookup):
    vectors = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    items = torch.tensor([9, 3, 2, 4, 10, 7])
    loss = calibration_loss(vectors, hand_lookup.pair_scores(items))
    assert loss.dtype == torch.float64
    loss.backward()
    assert vectors.grad is not None
    assert torch.isfinite(vectors.grad).all()
    assert vectors.grad.abs().sum() > 0

    # Same gradient as the reference loop, and a step against it lowers the loss.
    ref_vectors = vectors.detach().clone().requires_grad_(True)
    calibration_loss_reference(ref_vectors, items, HAND_PAIRS).backward()
    torch.testing.assert_close(vectors.grad, ref_vectors.grad)
    stepped = calibration_loss(
        vectors.detach() - 0.01 * vectors.grad, hand_lookup.pair_scores(items)
    )
    assert stepped < loss


def test_equal_vectors_give_finite_zero_distance():
    vectors = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]], requires_grad=True)
    loss = calibration_loss(vectors, torch.zeros(2, 2))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert torch.isfinite(vectors.grad).all()


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_items_give_zero(hand_lookup, n):
    vectors = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
    items = torch.tensor([7, 9][:n], dtype=torch.int64)
    loss = calibration_loss(vectors, hand_lookup.pair_scores(items))
    assert loss.shape == ()
    assert loss.item() == 0.0
    assert loss.dtype == torch.float64
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(vectors.grad, torch.zeros(n, 4, dtype=torch.float64))
    assert calibration_loss_reference(vectors, items, HAND_PAIRS).item() == 0.0


def test_calibration_loss_shape_checks():
    with pytest.raises(ValueError, match=r"\(n, h\)"):
        calibration_loss(torch.randn(3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        calibration_loss(torch.randn(3, 2), torch.zeros(2, 2))


@pytest.mark.parametrize(
    ("i", "j", "s", "n_items", "message"),
    [
        ([2], [1], [0.5], 5, "i < j"),
        ([3], [3], [0.5], 5, "i < j"),
        ([0], [1], [0.5], 5, r"\[1, 5\]"),
        ([1], [6], [0.5], 5, r"\[1, 5\]"),
        ([1], [2], [0.0], 5, r"\(0, 1\]"),
        ([1], [2], [1.5], 5, r"\(0, 1\]"),
        ([1], [2], [float("nan")], 5, r"\(0, 1\]"),
        ([1], [2], [float("inf")], 5, r"\(0, 1\]"),
        ([1, 1], [2, 2], [0.5, 0.5], 5, r"pair \(1, 2\) appears more than once"),
        ([1, 2], [2], [0.5], 5, "one length"),
        ([1.0], [2.0], [0.5], 5, "integers"),
        ([1], [2], [1], 5, "floats"),
        ([1], [2], [0.5], 0, "n_items"),
    ],
)
def test_from_pairs_rejects_bad_tables(i, j, s, n_items, message):
    with pytest.raises(ValueError, match=message):
        CooccurrenceLookup.from_pairs(np.array(i), np.array(j), np.array(s), n_items)


def test_from_pairs_csr_layout(hand_lookup):
    assert hand_lookup.n_pairs == 3
    assert hand_lookup.indptr.tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 5, 5, 6, 6]
    assert hand_lookup.indices.tolist() == [5, 7, 2, 4, 9, 7]
    assert hand_lookup.values.tolist() == [0.25, 0.5, 0.25, 0.5, 1.0, 1.0]
    moved = hand_lookup.to("cpu")
    assert moved.device == torch.device("cpu")
    assert torch.equal(moved.pair_scores(torch.tensor([4, 7])), torch.tensor([[0, 0.5], [0.5, 0]]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_matches_cpu():
    i, j, s = random_table(500, 8000, seed=9)
    lookup = CooccurrenceLookup.from_pairs(i, j, s, 500)
    items = torch.randperm(500)[:120] + 1
    vectors = torch.randn(120, 32)
    cpu = calibration_loss(vectors, lookup.pair_scores(items))
    gpu_lookup = lookup.to("cuda")
    scores = gpu_lookup.pair_scores(items.cuda())
    assert scores.device.type == "cuda"
    torch.testing.assert_close(scores.cpu(), lookup.pair_scores(items))
    torch.testing.assert_close(calibration_loss(vectors.cuda(), scores).cpu(), cpu)


def test_the_dense_matrix_of_a_small_catalog_gives_the_csr_rows_scores(monkeypatch):
    i, j, s = random_table(300, 5000, seed=8)
    lookup = CooccurrenceLookup.from_pairs(i, j, s, 300)
    batches = [torch.randperm(300)[:n] + 1 for n in (1, 2, 77, 300)]
    dense = [lookup.pair_scores(items) for items in batches]
    assert lookup._dense is not None
    monkeypatch.setattr(losses, "DENSE_MAX_ITEMS", 0)
    for items, expected in zip(batches, dense, strict=True):
        assert torch.equal(CooccurrenceLookup.from_pairs(i, j, s, 300).pair_scores(items), expected)
