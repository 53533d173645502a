"""Tests for causalzoo.identifiability.metrics."""

from itertools import permutations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from causalzoo import CausalZooError
from causalzoo.identifiability import (
    align,
    correlation_matrix,
    entangled_floor,
    mask_recovery,
    mcc,
)
from causalzoo.testing import examples

MONOTONE_MAPS = [
    lambda v: np.exp(v),
    lambda v: v**3 + v,
    lambda v: np.tanh(2.0 * v) + 0.2 * v,
    lambda v: -3.0 * v + 1.0,
    lambda v: -np.arctan(v) - 0.1 * v,
    lambda v: np.sinh(v),
]


def _gauss(n, d, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


# ---------------------------------------------------------------- correlation_matrix


def test_correlation_matrix_shape_and_values():
    z = _gauss(300, 3)
    zh = np.c_[z[:, 1], -z[:, 0], z[:, 2], z[:, 0] + z[:, 1]]
    c = correlation_matrix(z, zh)
    assert c.shape == (3, 4)
    assert np.all((c >= 0) & (c <= 1))
    np.testing.assert_allclose([c[1, 0], c[0, 1], c[2, 2]], 1.0, atol=1e-12)


def test_constant_column_gives_zero_not_nan():
    z = _gauss(100, 2)
    zh = np.c_[z[:, 0], np.full(100, 3.7)]
    for method in ("pearson", "spearman"):
        c = correlation_matrix(z, zh, method=method)
        assert np.all(np.isfinite(c))
        np.testing.assert_array_equal(c[:, 1], 0.0)


def test_spearman_matches_pearson_of_ranks():
    from scipy.stats import spearmanr

    z = _gauss(200, 2, 1)
    zh = np.exp(_gauss(200, 2, 2) + z)
    c = correlation_matrix(z, zh, method="spearman")
    ref = np.abs(spearmanr(z, zh).statistic[:2, 2:])
    np.testing.assert_allclose(c, ref, atol=1e-12)


# ---------------------------------------------------------------------------- mcc


def test_mcc_invariant_to_permutation_sign_and_positive_scaling():
    z = _gauss(500, 5)
    perm = np.array([3, 0, 4, 1, 2])
    zh = z[:, perm] * np.array([2.0, -0.5, 3.0, -1.0, 10.0]) + 4.0
    score, matching = mcc(z, zh, return_matching=True)
    assert score == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(perm[matching], np.arange(5))


@settings(max_examples=examples(25), deadline=None)
@given(
    d=st.integers(2, 6),
    n=st.integers(50, 400),
    seed=st.integers(0, 2**16),
    maps=st.lists(st.integers(0, len(MONOTONE_MAPS) - 1), min_size=6, max_size=6),
)
def test_spearman_mcc_invariant_to_monotone_maps(d, n, seed, maps):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    perm = rng.permutation(d)
    zh = np.column_stack([MONOTONE_MAPS[maps[i]](z[:, perm[i]]) for i in range(d)])
    assert mcc(z, zh, method="spearman") >= 1 - 1e-9


def test_pearson_mcc_below_one_under_nonlinear_monotone_map():
    z = _gauss(2000, 3)
    zh = np.exp(2.0 * z)
    assert mcc(z, zh, method="spearman") == pytest.approx(1.0)
    assert mcc(z, zh, method="pearson") < 0.9


@pytest.mark.parametrize("d_true,d_hat", [(2, 2), (3, 3), (4, 4), (5, 5), (2, 4), (3, 5)])
def test_mcc_matches_brute_force(d_true, d_hat):
    rng = np.random.default_rng(d_true * 10 + d_hat)
    z = rng.normal(size=(300, d_true))
    zh = np.c_[z, rng.normal(size=(300, d_hat - d_true))] @ rng.normal(size=(d_hat, d_hat))
    zh += 0.5 * rng.normal(size=zh.shape)
    c = correlation_matrix(z, zh)
    brute = max(
        np.mean([c[i, p[i]] for i in range(d_true)])
        for p in permutations(range(d_hat), d_true)
    )
    assert mcc(z, zh) == pytest.approx(brute, abs=1e-12)


def test_rectangular_matching_uses_distinct_columns():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(400, 3))
    zh = np.c_[rng.normal(size=400), z[:, 2], rng.normal(size=400), -z[:, 0], z[:, 1] * 5]
    score, matching = mcc(z, zh, return_matching=True)
    assert score == pytest.approx(1.0)
    np.testing.assert_array_equal(matching, [3, 4, 1])
    # two true dims that both correlate with one column still get distinct columns
    z2 = np.c_[z[:, 0], z[:, 0] + 0.1 * rng.normal(size=400)]
    _, m2 = mcc(z2, np.c_[z[:, 0], rng.normal(size=400), rng.normal(size=400)],
                return_matching=True)
    assert len(set(m2.tolist())) == 2


def test_independent_noise_scores_low():
    rng = np.random.default_rng(0)
    assert mcc(rng.normal(size=(2000, 5)), rng.normal(size=(2000, 5))) < 0.2


def test_mcc_accepts_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    z = _gauss(100, 2)
    assert mcc(jnp.asarray(z), jnp.asarray(z[:, ::-1])) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "z_true,z_hat,match",
    [
        (np.zeros((10, 3)), np.zeros((10, 2)), "at least as many"),
        (np.zeros((10, 2)), np.zeros((9, 2)), "same samples"),
        (np.zeros(10), np.zeros((10, 1)), "2-D"),
        (np.full((10, 2), np.nan), np.zeros((10, 2)), "NaN"),
        (np.zeros((1, 2)), np.zeros((1, 2)), "at least 2 samples"),
    ],
)
def test_mcc_input_errors(z_true, z_hat, match):
    with pytest.raises(CausalZooError, match=match):
        mcc(z_true, z_hat)


def test_unknown_method():
    with pytest.raises(CausalZooError, match="kendall"):
        mcc(np.ones((5, 1)), np.ones((5, 1)), method="kendall")


# --------------------------------------------------------------------------- align


def test_align_recovers_permutation_signs_and_scale():
    z = _gauss(500, 3, 4)
    zh = np.c_[z[:, 2] * -2.0 + 1.0, z[:, 0] * 0.5, _gauss(500, 1, 5)[:, 0], -z[:, 1]]
    aligned, perm, signs = align(z, zh)
    np.testing.assert_array_equal(perm, [1, 3, 0])
    np.testing.assert_array_equal(signs, [1.0, -1.0, -1.0])
    assert aligned.shape == (500, 3)
    np.testing.assert_allclose(aligned[:, 1], z[:, 1])
    scaled, _, _ = align(z, zh, scale=True)
    np.testing.assert_allclose(scaled, z, atol=1e-10)


def test_align_spearman_signs():
    z = _gauss(300, 2, 6)
    zh = np.c_[-np.exp(z[:, 1]), z[:, 0] ** 3]
    _, perm, signs = align(z, zh, method="spearman")
    np.testing.assert_array_equal(perm, [1, 0])
    np.testing.assert_array_equal(signs, [1.0, -1.0])


# ----------------------------------------------------------------- entangled_floor


@pytest.mark.parametrize("d,expected", [(3, 0.84), (5, 0.74), (8, 0.63)])
def test_rotation_floor_matches_design(d, expected):
    z = _gauss(4000, d, d)
    floor = entangled_floor(z, n_rotations=150, seed=1)
    assert floor["rotation"] == pytest.approx(expected, abs=0.04)
    assert floor["rotation"] <= floor["rotation_max"] <= 1.0
    assert "observations" not in floor


def test_floor_is_seeded_and_scale_free():
    z = _gauss(500, 4)
    a = entangled_floor(z, n_rotations=5, seed=3)
    assert a == entangled_floor(z, n_rotations=5, seed=3)
    assert a == pytest.approx(entangled_floor(z * 100.0 + 7.0, n_rotations=5, seed=3))
    assert a != entangled_floor(z, n_rotations=5, seed=4)


def test_floor_observations():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(600, 3))
    assert entangled_floor(z, n_rotations=2, x=z[:, ::-1] * 3)["observations"] == (
        pytest.approx(1.0)
    )
    # many columns: principal components are used
    x = np.c_[z * np.array([5.0, 3.0, 1.0]), 0.01 * rng.normal(size=(600, 77))]
    assert entangled_floor(z, n_rotations=2, x=x)["observations"] > 0.99
    # fewer observed columns than latents: unmatched dims count as 0
    obs = entangled_floor(z, n_rotations=2, x=z[:, :1])["observations"]
    assert obs == pytest.approx(1 / 3)
    with pytest.raises(CausalZooError, match="same samples"):
        entangled_floor(z, x=z[:10])
    with pytest.raises(CausalZooError, match="n_rotations"):
        entangled_floor(z, n_rotations=0)


# ------------------------------------------------------------------- mask_recovery


def test_mask_recovery_perfect_on_truth_with_matching():
    rng = np.random.default_rng(0)
    m = (rng.random((12, 4)) < 0.4).astype(float)
    m[0] = 1.0
    m[1] = 0.0
    perm = np.array([2, 0, 3, 1])
    p = np.zeros((12, 5))
    p[:, perm] = m * 0.9 + 0.05
    p[:, 4] = 0.5
    assert mask_recovery(m, p) == {"auroc": 1.0, "f1": 1.0, "accuracy": 1.0}
    assert mask_recovery(m, p, matching=perm) == {"auroc": 1.0, "f1": 1.0, "accuracy": 1.0}
    bad = mask_recovery(m, p, matching=[4, 4, 4, 4])
    assert bad["auroc"] == 0.5


def test_mask_recovery_random_is_chance():
    rng = np.random.default_rng(1)
    m = (rng.random((400, 6)) < 0.3).astype(float)
    p = rng.random((400, 6))
    out = mask_recovery(m, p, matching=np.arange(6))
    assert out["auroc"] == pytest.approx(0.5, abs=0.04)
    assert out["accuracy"] == pytest.approx(0.5, abs=0.04)


def test_auroc_matches_pairwise_definition_with_ties():
    m = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0]], dtype=float)
    p = np.array([[0.8, 0.3, 0.3], [0.3, 0.1, 0.8], [0.5, 0.5, 0.2]])
    out = mask_recovery(m, p, matching=[0, 1, 2])
    pos, neg = p[m == 1], p[m == 0]
    ref = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert out["auroc"] == pytest.approx(ref)
    pred = p >= 0.5
    tp, fp, fn = np.sum(pred & (m == 1)), np.sum(pred & (m == 0)), np.sum(~pred & (m == 1))
    assert out["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert out["accuracy"] == pytest.approx(np.mean(pred == (m == 1)))


def test_mask_recovery_single_class_gives_nan_auroc():
    out = mask_recovery(np.ones((3, 2)), np.full((3, 2), 0.9), matching=[0, 1])
    assert np.isnan(out["auroc"]) and out["f1"] == 1.0


@pytest.mark.parametrize(
    "m,p,matching,match",
    [
        (np.ones((3, 2)), np.ones((4, 2)), None, "perturbations"),
        (np.ones((3, 2)), np.ones((3, 1)), None, "at least as many"),
        (np.full((3, 2), 0.5), np.ones((3, 2)), None, "only 0 and 1"),
        (np.ones((3, 2)), np.full((3, 2), 2.0), None, "probabilities"),
        (np.ones((3, 2)), np.ones((3, 2)), [0, 5], "matching"),
        (np.ones(3), np.ones(3), None, "2-D"),
    ],
)
def test_mask_recovery_errors(m, p, matching, match):
    with pytest.raises(CausalZooError, match=match):
        mask_recovery(m, p, matching=matching)
