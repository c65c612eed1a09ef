"""PCA bases and pooled item vectors on small arrays written here."""

import numpy as np
import pyarrow as pa
import pytest
from sklearn.decomposition import PCA

from genair_core.config import PoolingConfig
from genair_core.llm.pooling import (
    PcaBasis,
    basis_id,
    fit_basis,
    must_fit,
    pool_archetypes,
    pool_vectors,
)
from genair_core.tables import archetypes_schema, item_embeddings_schema, to_fixed_list, to_matrix


def _hidden(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Hidden-state-like rows: low-rank structure plus noise and one large offset dimension."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)) @ rng.normal(size=(8, d)) + 0.1 * rng.normal(size=(n, d))
    x[:, 0] += 50.0  # LLM hidden states carry a few huge constant-ish dimensions
    return x.astype(np.float32)


def test_projecting_the_fitting_data_matches_sklearn_fit_transform():
    x = _hidden(60, 24)  # small: sklearn's "auto" picks the exact ("full") solver
    pca = PCA(n_components=10, random_state=42)
    expected = pca.fit_transform(x.astype(np.float64))
    assert pca._fit_svd_solver == "full"
    got = fit_basis(x, n_components=10).project(x)
    assert got.shape == (60, 10)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_randomized_solver_matches_sklearn_transform():
    """With the randomized solver (what ml-100k's 1,682 x 576 gets), fit_transform returns U·S,
    which on the not fully converged tail components differs from X·Vᵀ. project() is X·Vᵀ, the
    same map for the fitting rows and for items added later, so it equals sklearn's transform."""
    x = _hidden(600, 64)
    pca = PCA(n_components=16, random_state=42)
    fit_transformed = pca.fit_transform(x.astype(np.float64))
    assert pca._fit_svd_solver == "randomized"
    expected = pca.transform(x.astype(np.float64))
    got = fit_basis(x, 16).project(x)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)
    # The well-separated leading components (rank-8 signal) agree with fit_transform as well.
    np.testing.assert_allclose(got[:, :8], fit_transformed[:, :8], rtol=1e-4, atol=1e-5 * scale)


def test_basis_fields_and_explained_variance():
    x = _hidden(40, 12)
    basis = fit_basis(x, 5, seed=7)
    assert (basis.dim, basis.input_dim, basis.n_fit, basis.seed) == (5, 12, 40, 7)
    assert basis.mean.shape == (12,)
    assert basis.components.shape == (5, 12)
    assert basis.mean.dtype == basis.components.dtype == np.float32
    np.testing.assert_allclose(basis.mean, x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(basis.components @ basis.components.T, np.eye(5), atol=1e-5)
    ratio = basis.explained_variance_ratio
    assert ratio.shape == (5,)
    assert np.all(np.diff(ratio) <= 0)
    assert 0 < ratio.sum() <= 1 + 1e-6
    assert "dim=5" in repr(basis)


def test_k_is_capped_below_the_item_count_on_tiny_catalogs():
    x = _hidden(5, 16)
    basis = fit_basis(x, n_components=384)
    assert basis.dim == 4  # 5 centred rows span at most 4 directions
    assert basis.project(x).shape == (5, 4)
    assert fit_basis(_hidden(50, 3), 384).dim == 3  # and never above D
    assert fit_basis(_hidden(2, 3), 384).dim == 1


def test_fit_rejects_too_few_rows_non_finite_and_constant_input():
    with pytest.raises(ValueError, match="at least 2 rows"):
        fit_basis(_hidden(1, 8), 4)
    x = _hidden(10, 8)
    x[3, 2] = np.nan
    x[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 of the 10 rows to fit on hold NaN or inf.*\[3, 7\]"):
        fit_basis(x, 4)
    with pytest.raises(ValueError, match="identical"):
        fit_basis(np.ones((10, 8), np.float32), 4)
    with pytest.raises(ValueError, match="2-d"):
        fit_basis(np.ones(8), 4)
    with pytest.raises(ValueError, match=">= 1"):
        fit_basis(x[:2], 0)
    with pytest.raises(TypeError, match="int"):
        fit_basis(_hidden(10, 8), 4.0)


def test_refits_on_identical_data_give_identical_bases():
    x = _hidden(600, 64)  # randomized solver: the fixed seed is what makes this hold
    a, b = fit_basis(x, 16), fit_basis(x.copy(), 16)
    assert np.array_equal(a.mean, b.mean)
    assert np.array_equal(a.components, b.components)
    assert np.array_equal(a.explained_variance_ratio, b.explained_variance_ratio)
    assert basis_id(a, a) == basis_id(b, b)


def test_component_signs_follow_the_largest_entry_rule():
    """Sign convention: each component's largest-magnitude entry is positive.

    It depends only on the direction, so negating the data (which flips every direction the SVD
    finds) gives the same components, and the projections simply change sign.
    """
    x = _hidden(100, 20)
    basis = fit_basis(x, 6)
    rows = np.arange(6)
    assert np.all(basis.components[rows, np.abs(basis.components).argmax(axis=1)] > 0)
    flipped = fit_basis(-x, 6)
    np.testing.assert_allclose(flipped.components, basis.components, atol=1e-5)
    np.testing.assert_allclose(flipped.project(-x), -basis.project(x), atol=1e-3)


def test_new_rows_are_projected_with_the_stored_basis():
    x = _hidden(80, 16)
    basis = fit_basis(x[:60], 8)
    new = x[60:]  # items added after the fit
    expected = (new.astype(np.float64) - basis.mean) @ basis.components.T.astype(np.float64)
    got = basis.project(new)
    assert got.shape == (20, 8)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The stored basis is not refitted: the old rows project exactly as they did before.
    np.testing.assert_array_equal(basis.project(x[:60]), basis.project(x[:60].copy()))


def test_project_rejects_a_dimension_mismatch_and_non_finite_rows():
    basis = fit_basis(_hidden(20, 16), 4)
    with pytest.raises(ValueError, match=r"expected \(N, 16\)"):
        basis.project(np.zeros((3, 15), np.float32))
    with pytest.raises(ValueError, match=r"expected \(N, 16\)"):
        basis.project(np.zeros(16, np.float32))
    bad = np.zeros((3, 16), np.float32)
    bad[1, 4] = np.nan
    with pytest.raises(ValueError, match="1 of the 3 projected rows"):
        basis.project(bad)


def test_basis_is_immutable_and_validated():
    basis = fit_basis(_hidden(20, 8), 3)
    with pytest.raises(ValueError, match="read-only"):
        basis.components[0, 0] = 1.0
    with pytest.raises(ValueError, match="shapes disagree"):
        PcaBasis(np.zeros(8), np.zeros((3, 7)), np.zeros(3), n_fit=20, seed=42)
    with pytest.raises(ValueError, match="NaN"):
        PcaBasis(np.full(8, np.nan), np.zeros((3, 8)), np.zeros(3), n_fit=20, seed=42)


def test_pool_vectors_shape_dtype_and_order():
    rng = np.random.default_rng(1)
    input_emb = rng.normal(size=(1000, 576)).astype(np.float32)
    gen_emb = rng.normal(size=(1000, 576)).astype(np.float32)
    input_basis, gen_basis = fit_basis(input_emb, 384), fit_basis(gen_emb, 384)

    vectors = pool_vectors(input_emb, gen_emb, input_basis, gen_basis)
    assert vectors.shape == (1000, 768)
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[:, :384], input_basis.project(input_emb))
    np.testing.assert_array_equal(vectors[:, 384:], gen_basis.project(gen_emb))


def test_pool_vectors_with_unequal_halves_and_mismatched_rows():
    input_emb, gen_emb = _hidden(30, 12, seed=1), _hidden(30, 20, seed=2)
    input_basis, gen_basis = fit_basis(input_emb, 4), fit_basis(gen_emb, 6)
    vectors = pool_vectors(input_emb, gen_emb, input_basis, gen_basis)
    assert vectors.shape == (30, 10)
    np.testing.assert_array_equal(vectors[:, :4], input_basis.project(input_emb))
    with pytest.raises(ValueError, match="same N"):
        pool_vectors(input_emb, gen_emb[:29], input_basis, gen_basis)
    with pytest.raises(ValueError, match=r"expected \(N, 12\)"):
        pool_vectors(gen_emb, input_emb, input_basis, gen_basis)  # halves swapped


def test_basis_id_is_short_stable_and_content_based():
    x, y = _hidden(40, 12, seed=1), _hidden(40, 12, seed=2)
    a, b = fit_basis(x, 4), fit_basis(y, 4)
    ident = basis_id(a, b)
    assert len(ident) == 16
    assert int(ident, 16) >= 0
    copy = PcaBasis(a.mean, a.components, a.explained_variance_ratio, n_fit=1, seed=0)
    assert basis_id(copy, b) == ident  # same projection, same id
    assert basis_id(b, a) != ident  # which half is which matters
    assert basis_id(fit_basis(x[:30], 4), b) != ident


def test_to_dict_round_trip_gives_the_same_basis():
    basis = fit_basis(_hidden(20, 8), 3, seed=5)
    fields = basis.to_dict()
    assert sorted(fields) == ["components", "explained_variance_ratio", "mean", "n_fit", "seed"]
    assert (fields["n_fit"], fields["seed"]) == (20, 5)
    again = PcaBasis.from_dict(fields)
    assert basis_id(again, again) == basis_id(basis, basis)
    assert np.array_equal(again.explained_variance_ratio, basis.explained_variance_ratio)
    with pytest.raises(ValueError, match="shapes disagree"):
        PcaBasis.from_dict({**fields, "mean": np.zeros(7)})


# --- the pooling stage -------------------------------------------------------------------------


def _archetypes(n: int, seed: int = 0) -> pa.Table:
    """n archetype rows as current_archetypes gives them (provenance and both hidden means)."""
    table = pa.table(
        {
            "item_id": [f"i{k:03d}" for k in range(n)],
            "content_hash": ["h"] * n,
            "model_id": ["m"] * n,
            "prompt_version": ["p"] * n,
            "settings_id": ["s"] * n,
            "input_emb": to_fixed_list(_hidden(n, 12, seed=seed)),
            "gen_emb": to_fixed_list(_hidden(n, 12, seed=seed + 1)),
        }
    )
    declared = archetypes_schema(12)
    return table.cast(pa.schema([declared.field(name) for name in table.column_names]))


def test_pooling_fits_bases_and_builds_item_embeddings():
    archetypes = _archetypes(30)
    pooled = pool_archetypes(archetypes, PoolingConfig(input_dims=4, gen_dims=3))
    assert pooled.fitted
    table = pooled.item_embeddings
    declared = item_embeddings_schema(7)
    assert [(f.name, f.type) for f in table.schema] == [(f.name, f.type) for f in declared]
    assert table.cast(declared).num_rows == 30  # no null where the schema forbids one
    assert table["item_id"].to_pylist() == archetypes["item_id"].to_pylist()
    bases = {name: PcaBasis.from_dict(fields) for name, fields in pooled.bases.items()}
    expected = pool_vectors(
        to_matrix(archetypes["input_emb"]), to_matrix(archetypes["gen_emb"]), bases["input"],
        bases["gen"],
    )  # fmt: skip
    np.testing.assert_array_equal(to_matrix(table["vector"]), expected)
    assert set(table["basis_id"].to_pylist()) == {basis_id(bases["input"], bases["gen"])}
    assert (bases["input"].seed, bases["input"].n_fit) == (42, 30)
    assert pooled.summary == {
        "items": 30,
        "dims": 7,
        "bases": "fitted",
        "basis_id": basis_id(bases["input"], bases["gen"]),
        "explained_input": pytest.approx(float(bases["input"].explained_variance_ratio.sum())),
        "explained_gen": pytest.approx(float(bases["gen"].explained_variance_ratio.sum())),
    }


def test_stored_bases_are_reused_for_new_items_unless_refit_is_asked():
    config = PoolingConfig(input_dims=4, gen_dims=3)
    grown = _archetypes(40)
    first = pool_archetypes(grown.slice(0, 30), config)  # ten items are added later
    again = pool_archetypes(grown, config, lambda: first.bases)
    assert not again.fitted
    assert again.summary["bases"] == "stored"
    assert again.summary["basis_id"] == first.summary["basis_id"]
    old = to_matrix(first.item_embeddings["vector"])
    np.testing.assert_array_equal(to_matrix(again.item_embeddings["vector"])[:30], old)

    def unreadable() -> None:
        raise AssertionError("a refit must not read the stored bases")

    refit = pool_archetypes(grown, config.model_copy(update={"refit": True}), unreadable)
    assert refit.fitted
    assert refit.summary["basis_id"] != first.summary["basis_id"]
    assert refit.bases["input"]["n_fit"] == 40


def test_the_stage_must_run_without_stored_bases_or_on_a_refit():
    assert must_fit(PoolingConfig(), have_stored=False)
    assert must_fit(PoolingConfig(refit=True), have_stored=True)
    assert not must_fit(PoolingConfig(), have_stored=True)


def test_bases_capped_on_a_tiny_catalog_are_refitted_once_it_grows():
    config = PoolingConfig(input_dims=4, gen_dims=3)
    tiny = pool_archetypes(_archetypes(3), config)
    assert tiny.summary["dims"] == 2 + 2  # 3 items: k = 2 per half
    grown = pool_archetypes(_archetypes(30), config, lambda: tiny.bases)
    assert grown.fitted
    assert grown.summary["dims"] == 4 + 3
    # capped but not outgrown: the same three items keep their bases
    assert not pool_archetypes(_archetypes(3), config, lambda: tiny.bases).fitted


def test_stored_bases_of_another_size_are_refused():
    stored = pool_archetypes(_archetypes(30), PoolingConfig(input_dims=4, gen_dims=3)).bases
    with pytest.raises(
        ValueError,
        match=r"stored input basis in x\.safetensors has 4 dims but pooling\.input_dims is 2: "
        r"set pooling\.refit = true",
    ):
        pool_archetypes(_archetypes(30), PoolingConfig(input_dims=2, gen_dims=3), lambda: stored,
                        stored_at="x.safetensors")  # fmt: skip
    # a basis capped below the configured size is not "another size"
    tiny = pool_archetypes(_archetypes(3), PoolingConfig(input_dims=4, gen_dims=3)).bases
    assert not pool_archetypes(_archetypes(3), PoolingConfig(), lambda: tiny).fitted
    partial = {"input": stored["input"]}
    with pytest.raises(ValueError, match=r"stored PCA bases in y are unusable .*refit"):
        pool_archetypes(_archetypes(30), PoolingConfig(), lambda: partial, stored_at="y")


def test_pooling_without_archetypes_is_an_error():
    for nothing in (None, _archetypes(0)):
        with pytest.raises(ValueError, match="no archetypes to pool"):
            pool_archetypes(nothing, PoolingConfig())
