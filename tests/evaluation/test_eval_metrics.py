"""Perturbation-prediction metrics and baselines against hand-computed values."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from causalzoo import CausalZooError
from causalzoo.evaluation import (
    additive_baseline,
    condition_means,
    direction_errors,
    log_normalize,
    mse,
    no_change_baseline,
    pearson_delta,
    score_condition,
    top_de_genes,
    train_mean_baseline,
)
from causalzoo.identifiability.generators import sparse_perturbation

# ------------------------------------------------------------------ log_normalize


def test_log_normalize_matches_formula_dense_and_sparse():
    counts = np.array([[1, 3, 0, 0], [2, 2, 4, 0], [0, 0, 0, 5]])
    expected = np.log1p(counts / counts.sum(1, keepdims=True) * 100.0)
    dense = log_normalize(counts, target_sum=100.0)
    sparse = log_normalize(sp.csr_matrix(counts), target_sum=100.0)
    assert isinstance(dense, np.ndarray) and isinstance(sparse, np.ndarray)
    np.testing.assert_allclose(dense, expected, rtol=1e-6)
    np.testing.assert_allclose(sparse, expected, rtol=1e-6)
    np.testing.assert_allclose(np.expm1(dense).sum(1), 100.0, rtol=1e-5)


def test_log_normalize_leaves_input_alone_and_rejects_bad_input():
    counts = np.array([[1.0, 3.0]])
    log_normalize(counts)
    np.testing.assert_array_equal(counts, [[1.0, 3.0]])
    with pytest.raises(CausalZooError, match="non-negative"):
        log_normalize(np.array([[-1.0, 2.0]]))
    with pytest.raises(CausalZooError, match="2-D"):
        log_normalize(np.array([1.0, 2.0]))
    with pytest.raises(CausalZooError, match="target_sum"):
        log_normalize(counts, target_sum=0)


# ------------------------------------------------------------- per-condition metrics

PRED = np.array([1.0, 2.0, 3.0, 0.5])
OBS = np.array([1.0, 3.0, 2.0, -1.0])
CTRL = np.array([0.0, 0.0, 0.0, 0.0])


def test_pearson_delta_hand_values():
    # genes 0..2: deltas a = [1, 2, 3], b = [1, 3, 2] -> centred [-1,0,1], [-1,1,0] -> 0.5
    assert pearson_delta(PRED, OBS, CTRL, genes=[0, 1, 2]) == pytest.approx(0.5)
    assert pearson_delta(PRED, OBS, CTRL, genes=np.array([1, 1, 1, 0], bool)) == (
        pytest.approx(0.5)
    )
    ctrl = np.array([1.0, 1.0, 1.0, 1.0])
    assert pearson_delta(PRED + 1, OBS + 1, ctrl) == pytest.approx(
        np.corrcoef(PRED, OBS)[0, 1]
    )
    assert np.isnan(pearson_delta(np.ones(4), OBS, CTRL))


def test_mse_and_direction_errors_hand_values():
    assert mse(PRED, OBS) == pytest.approx((0 + 1 + 1 + 2.25) / 4)
    assert mse(PRED, OBS, genes=[1, 2]) == pytest.approx(1.0)
    assert direction_errors(PRED, OBS, CTRL, genes=[0, 1, 2, 3]) == pytest.approx(0.25)
    assert direction_errors(PRED, OBS, CTRL, genes=[3]) == 1.0
    assert direction_errors([0.0, 1.0], [0.0, 1.0], [0.0, 0.0], genes=[0, 1]) == 0.0


def test_score_condition():
    s = score_condition(PRED, OBS, CTRL, de_genes=[0, 1, 2])
    assert s == pytest.approx(
        {
            "pearson_delta": np.corrcoef(PRED, OBS)[0, 1],
            "pearson_delta_de": 0.5,
            "mse_de": 2 / 3,
            "direction_errors_de": 0.0,
        }
    )


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: mse(np.ones((2, 2)), np.ones((2, 2))), "1-D"),
        (lambda: mse(np.ones(3), np.ones(4)), "same genes"),
        (lambda: mse(np.ones(3), np.ones(3), genes=[5]), "index"),
        (lambda: mse(np.ones(3), np.ones(3), genes=[]), "non-empty"),
        (lambda: pearson_delta(np.ones(3), np.ones(3), np.ones(3), genes=[True]), "boolean"),
    ],
)
def test_metric_input_errors(call, match):
    with pytest.raises(CausalZooError, match=match):
        call()


# ------------------------------------------------------------------- top_de_genes


@pytest.fixture(scope="module")
def planted_adata():
    rng = np.random.default_rng(0)
    n, g = 150, 60
    base = rng.gamma(2.0, 2.0, size=g) + 1.0
    mu = np.tile(base, (2 * n, 1))
    up, down = [5, 17, 42], [8, 30]
    mu[n:, up] *= 8.0
    mu[n:, down] /= 10.0
    counts = rng.poisson(mu * 20).astype(np.float32)
    obs = pd.DataFrame(
        {"perturbation": pd.Categorical(["ctrl"] * n + ["A"] * n)},
        index=[f"c{i}" for i in range(2 * n)],
    )
    adata = ad.AnnData(X=log_normalize(counts), obs=obs)
    adata.var_names = [f"g{i}" for i in range(g)]
    adata.layers["lognorm"] = adata.X.copy()
    return adata, set(up + down)


def test_top_de_genes_finds_planted_genes(planted_adata):
    adata, planted = planted_adata
    uns_before = set(adata.uns)
    top = top_de_genes(adata, "perturbation", "A", "ctrl", n_genes=5)
    assert top.dtype == np.int64 and top.shape == (5,)
    assert set(top.tolist()) == planted
    assert set(adata.uns) == uns_before, "input must not be modified"
    top_layer = top_de_genes(adata, "perturbation", "A", "ctrl", n_genes=5, layer="lognorm")
    np.testing.assert_array_equal(np.sort(top), np.sort(top_layer))
    assert top_de_genes(adata, "perturbation", "A", "ctrl", n_genes=500).shape == (60,)


def test_top_de_genes_errors(planted_adata):
    adata, _ = planted_adata
    with pytest.raises(CausalZooError, match="'B'"):
        top_de_genes(adata, "perturbation", "B", "ctrl")
    with pytest.raises(CausalZooError, match="groupby"):
        top_de_genes(adata, "condition", "A", "ctrl")
    with pytest.raises(CausalZooError, match="layer"):
        top_de_genes(adata, "perturbation", "A", "ctrl", layer="counts")
    neg = adata.copy()
    neg.X = neg.X - 1.0
    with pytest.raises(CausalZooError, match="negative"):
        top_de_genes(neg, "perturbation", "A", "ctrl")


# ---------------------------------------------------------------------- baselines


def test_condition_means_dense_and_sparse():
    x = np.array([[0.0, 1.0], [2.0, 3.0], [10.0, 10.0]])
    labels = ["c", "c", "A"]
    for arr in (x, sp.csr_matrix(x)):
        m = condition_means(arr, labels)
        assert list(m) == ["c", "A"]
        np.testing.assert_allclose(m["c"], [1.0, 2.0])
        np.testing.assert_allclose(m["A"], [10.0, 10.0])
    with pytest.raises(CausalZooError, match="one label per cell"):
        condition_means(x, ["c"])


def test_additive_baseline_exact_when_truth_is_additive():
    rng = np.random.default_rng(0)
    ctrl = rng.normal(size=20)
    eff = {k: rng.normal(size=20) for k in "ABC"}
    means = {"ctrl": ctrl, **{k: ctrl + v for k, v in eff.items()}}
    truth = {"A+B": ctrl + eff["A"] + eff["B"], "A+B+C": ctrl + sum(eff.values()),
             "C+ctrl": ctrl + eff["C"]}
    pred = additive_baseline(means, "ctrl", list(truth))
    for k, v in truth.items():
        np.testing.assert_allclose(pred[k], v, atol=1e-12)
    np.testing.assert_allclose(additive_baseline(means, "ctrl", ["A_B"], sep="_")["A_B"],
                               truth["A+B"])
    with pytest.raises(CausalZooError, match="'D'"):
        additive_baseline(means, "ctrl", ["A+D"])
    with pytest.raises(CausalZooError, match="empty part"):
        additive_baseline(means, "ctrl", ["A+"])
    with pytest.raises(CausalZooError, match="control 'none'"):
        additive_baseline(means, "none", ["A+B"])


def test_no_change_and_train_mean_baselines():
    means = {"c": np.array([0.0, 1.0]), "A": np.array([2.0, 1.0]), "B": np.array([4.0, 3.0])}
    nc = no_change_baseline(means, "c", ["A+B", "X"])
    np.testing.assert_array_equal(nc["X"], means["c"])
    nc["X"][0] = 99.0
    assert means["c"][0] == 0.0, "predictions are copies"
    tm = train_mean_baseline(means, "c", ["c", "A", "B"], ["A+B"])
    np.testing.assert_allclose(tm["A+B"], [3.0, 2.0])
    with pytest.raises(CausalZooError, match="no perturbed condition"):
        train_mean_baseline(means, "c", ["c"], ["A"])
    with pytest.raises(CausalZooError, match="'Z'"):
        train_mean_baseline(means, "c", ["Z"], ["A"])


def test_end_to_end_on_generated_counts():
    data = sparse_perturbation(n_perturbations=4, n_cells_per_condition=80, n_genes=60,
                               n_combinations=3, seed=1)
    adata = data.to_anndata()
    lognorm = log_normalize(adata.X)
    means = condition_means(lognorm, data.labels)
    combos = [c for c in data.conditions if "+" in c]
    preds = additive_baseline(means, "control", combos)
    lad = ad.AnnData(X=lognorm, obs=adata.obs.copy())
    lad.var_names = adata.var_names.copy()
    for combo in combos:
        de = top_de_genes(lad, "perturbation", combo, "control", n_genes=20)
        s = score_condition(preds[combo], means[combo], means["control"], de)
        assert np.isfinite(list(s.values())).all()
        assert s["pearson_delta_de"] > 0.0
