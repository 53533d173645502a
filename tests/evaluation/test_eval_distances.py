"""New metrics (NRMSE, R², DE-weighted R²(Δ), DE ranking), cell-level distances and latent
arithmetic against hand-computed values."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from causalzoo import CausalZooError
from causalzoo.evaluation import (
    PCASpace,
    de_ranking,
    energy_distance,
    latent_arithmetic_baseline,
    log_normalize,
    median_bandwidth,
    mmd,
    nrmse,
    r2_delta_weighted,
    r2_means,
    top_de_genes,
)


def test_nrmse_and_r2_means_hand_values():
    pred, obs = np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 5.0])
    # sqrt(mean([0, 1, 1]) / mean([1, 9, 25])) = sqrt((2/3) / (35/3))
    assert nrmse(pred, obs) == pytest.approx(np.sqrt(2 / 35))
    assert nrmse(obs, obs) == 0.0
    assert nrmse(pred, obs, genes=[0]) == 0.0
    # SS_res = 2, SS_tot = (1-3)^2 + 0 + (5-3)^2 = 8
    assert r2_means(pred, obs) == pytest.approx(0.75)
    assert r2_means(np.full(3, obs.mean()), obs) == pytest.approx(0.0)
    assert np.isnan(r2_means(pred, np.ones(3)))


def test_r2_delta_weighted_hand_values_and_mean_predictor():
    obs = np.array([2.0, 0.0, -1.0])
    ref = np.array([0.0, 0.0, 0.0])
    w = np.array([1.0, 2.0, 1.0])
    pred = np.array([1.0, 0.5, -1.0])
    # 1 - (1*1 + 2*0.25 + 0) / (1*4 + 0 + 1*1) = 1 - 1.5/5
    assert r2_delta_weighted(pred, obs, ref, w) == pytest.approx(0.7)
    assert r2_delta_weighted(ref, obs, ref, w) == 0.0  # predicting the reference scores 0
    assert r2_delta_weighted(obs, obs, ref, w) == 1.0
    # Zero weight on a gene removes it.
    assert r2_delta_weighted([2.0, 9.0], [2.0, 0.0], [0.0, 0.0], [1.0, 0.0]) == 1.0
    with pytest.raises(CausalZooError, match="non-negative"):
        r2_delta_weighted(pred, obs, ref, [-1.0, 1.0, 1.0])
    with pytest.raises(CausalZooError, match="non-negative"):
        r2_delta_weighted(pred, obs, ref, np.zeros(3))


def test_de_ranking_agrees_with_top_de_genes():
    rng = np.random.default_rng(0)
    n, g = 80, 30
    mu = np.tile(rng.gamma(2.0, 2.0, g) + 1, (3 * n, 1))
    mu[n:2 * n, [3, 7]] *= 6.0
    mu[2 * n:, [11]] /= 8.0
    counts = rng.poisson(mu * 10).astype(np.float32)
    obs = pd.DataFrame({"p": ["ctrl"] * n + ["A"] * n + ["B"] * n},
                       index=[f"c{i}" for i in range(3 * n)])
    adata = ad.AnnData(X=log_normalize(counts), obs=obs)
    adata.var_names = [f"g{i}" for i in range(g)]
    ranks = de_ranking(adata, "p", ["A", "B"], "ctrl")
    for group, planted in (("A", {3, 7}), ("B", {11})):
        order, scores = ranks[group]
        assert sorted(order.tolist()) == list(range(g))
        np.testing.assert_array_equal(order[:5], top_de_genes(adata, "p", group, "ctrl", 5))
        assert set(order[: len(planted)].tolist()) == planted
        assert np.all(scores >= 0) and np.all(np.diff(scores[order]) <= 1e-12)
    with pytest.raises(CausalZooError, match="'C'"):
        de_ranking(adata, "p", ["C"], "ctrl")
    with pytest.raises(CausalZooError, match="also listed"):
        de_ranking(adata, "p", ["A", "ctrl"], "ctrl")


def test_energy_distance_and_mmd_hand_values():
    x, y = np.array([[0.0], [1.0]]), np.array([[3.0], [4.0]])
    # cross mean = mean(3, 4, 2, 3) = 3; within x = within y = 1 -> 2*3 - 1 - 1
    assert energy_distance(x, y) == pytest.approx(4.0)
    assert energy_distance(y, x) == pytest.approx(4.0)
    expected = 2 * np.exp(-0.5) - 2 * np.mean(np.exp(-np.array([4.5, 8.0, 2.0, 4.5])))
    assert mmd(x, y, bandwidths=1.0) == pytest.approx(expected)
    # Two bandwidths sum two kernels.
    k2 = 2 * np.exp(-1 / 8) - 2 * np.mean(np.exp(-np.array([9, 16, 4, 9]) / 8.0))
    assert mmd(x, y, bandwidths=[1.0, 2.0]) == pytest.approx(expected + k2)
    assert median_bandwidth([[0.0], [1.0], [3.0]]) == 2.0
    assert median_bandwidth([[1.0], [1.0]]) == 1.0


def test_cell_distances_grow_with_a_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 3)), rng.normal(size=(200, 3))
    near, far = energy_distance(a, b), energy_distance(a, b + 1.0)
    assert abs(near) < 0.1 < far
    assert abs(mmd(a, b)) < 0.05 < mmd(a, b + 1.0)
    # A sample that matches the mean but not the spread is still told apart.
    assert energy_distance(a, 0.1 * b) > 0.3


def test_distance_input_errors():
    with pytest.raises(CausalZooError, match="at least 2 cells"):
        energy_distance([[0.0]], [[1.0], [2.0]])
    with pytest.raises(CausalZooError, match="same space"):
        mmd(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(CausalZooError, match="non-finite"):
        energy_distance([[0.0], [np.nan]], [[1.0], [2.0]])
    with pytest.raises(CausalZooError, match="bandwidths"):
        mmd([[0.0], [1.0]], [[1.0], [2.0]], bandwidths=0.0)


def test_pca_space_round_trip_and_latent_arithmetic_exact():
    rng = np.random.default_rng(2)
    # Cells on a 3-D affine subspace of 8 genes, so 3 components hold them exactly.
    basis = rng.normal(size=(3, 8))
    offset = rng.normal(size=8)

    def cells(center, n):
        return (center + rng.normal(size=(n, 3))) @ basis + offset

    shift = np.array([1.0, -2.0, 0.5])
    ctx = {c: rng.normal(size=3) * 3 for c in ("T", "B", "NK")}
    ctrl = {c: cells(ctx[c], 60) for c in ctx}
    # Truth additive in the latent: stimulated = control + the same shift in every context.
    stim = {c: ctrl[c] + shift @ basis for c in ctx}
    space = PCASpace(np.concatenate([ctrl["T"], ctrl["B"], stim["T"], stim["B"]]), n_comps=3)
    np.testing.assert_allclose(space.inverse_transform(space.transform(ctrl["NK"])),
                               ctrl["NK"], atol=1e-4)
    pred = latent_arithmetic_baseline(space, ctrl["NK"],
                                      [(stim["T"], ctrl["T"]), (stim["B"], ctrl["B"])])
    np.testing.assert_allclose(pred, stim["NK"], atol=1e-4)  # float32 PCA
    with pytest.raises(CausalZooError, match="at least one training context"):
        latent_arithmetic_baseline(space, ctrl["NK"], [])
