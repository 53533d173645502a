"""sparse_shift_rotation: the sparsity of the perturbation shifts resolves a linear mixing of
the latents up to a signed permutation (and fails to when the shifts are dense)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from causalzoo import CausalZooError
from causalzoo.identifiability import mcc
from causalzoo.identifiability.shift_rotation import (
    ShiftRotation,
    sparse_shift_rotation,
)


def sparse_latents(seed, k=3, n_per=150, noise=(0.3, 0.3, 0.3)):
    """Latents of a control and 8 perturbations, each shifting one or two latents (every
    latent targeted by a different set), with diagonal Gaussian noise."""
    rng = np.random.default_rng(seed)
    masks = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0],
                      [0, 0, 1], [1, 0, 1]], float)[:, :k]
    shifts = masks * rng.choice([-1, 1], masks.shape) * rng.uniform(1.5, 3.0, masks.shape)
    labels = np.repeat(["ctrl"] + [f"P{t}" for t in range(len(shifts))], n_per)
    means = np.vstack([np.zeros((1, k)), shifts]).repeat(n_per, 0)
    z = means + rng.normal(size=means.shape) * np.asarray(noise[:k])
    return z, labels


def mixed(z, seed):
    """An invertible, well-conditioned linear map and an offset."""
    rng = np.random.default_rng(seed + 100)
    while True:
        a = rng.normal(size=(z.shape[1], z.shape[1]))
        if np.linalg.cond(a) < 20:
            return z @ a + rng.normal(size=z.shape[1]) * 3


@settings(deadline=None)  # 2 x 9 descents of a 3x3 rotation: ~0.6 s a call
@given(seed=st.integers(0, 10_000))
@example(seed=464).via("the first counterexample to the earlier bound of 0.99")
@example(seed=9176).via("the lowest score of 301 random seeds, 0.9826")
def test_undoes_any_linear_mixing_of_sparse_shift_latents(seed):
    """The mixing is undone: the answer from the mixed latents is the answer from the
    unmixed ones, and it is close to a signed permutation of the truth. How close is capped
    by the whitening on 150 control cells, not by the mixing: over 301 random seeds the
    score was at least 0.9826 (below 0.99 on 5, e.g. seed 464: 0.98966 from the mixed and
    from the unmixed latents alike), and the two answers differed by at most 7e-4."""
    z, labels = sparse_latents(seed)
    z_hat = mixed(z, seed)
    score = mcc(z, sparse_shift_rotation(z_hat, labels, "ctrl", n_starts=8).transform(z_hat))
    unmixed = mcc(z, sparse_shift_rotation(z, labels, "ctrl", n_starts=8).transform(z))
    assert abs(score - unmixed) < 2e-3, (score, unmixed)
    assert score > 0.98


def test_unequal_noise_scales_and_the_raw_mixing_scores_lower():
    z, labels = sparse_latents(1, noise=(0.2, 0.5, 0.3))
    z_hat = mixed(z, 1)
    rot = sparse_shift_rotation(z_hat, labels, "ctrl")
    assert mcc(z, rot.transform(z_hat)) > 0.99
    assert mcc(z, z_hat) < 0.95
    # the control cells come out whitened and the shifts sparse
    white = rot.transform(z_hat[labels == "ctrl"])
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(3), atol=1e-8)
    np.testing.assert_allclose(rot.rotation @ rot.rotation.T, np.eye(3), atol=1e-8)
    small = np.abs(rot.shifts) < 0.2 * np.abs(rot.shifts).max()
    assert small.sum() >= 10  # 11 of the 24 true shift entries are zero


def test_dense_shifts_do_not_identify_the_rotation():
    """Negative control: every perturbation shifting every latent leaves no sparse rotation
    to find, and the recovered latents stay entangled."""
    rng = np.random.default_rng(0)
    shifts = rng.normal(size=(8, 3)) * 2.0
    labels = np.repeat(["ctrl"] + [f"P{t}" for t in range(8)], 150)
    z = np.vstack([np.zeros((1, 3)), shifts]).repeat(150, 0) + rng.normal(size=(1350, 3)) * 0.3
    z_hat = mixed(z, 0)
    rot = sparse_shift_rotation(z_hat, labels, "ctrl")
    assert mcc(z, rot.transform(z_hat)) < 0.95


def test_round_trip_and_transform_shape():
    z, labels = sparse_latents(2)
    rot = sparse_shift_rotation(z, labels, "ctrl", n_starts=4)
    again = ShiftRotation.from_dict(rot.to_dict())
    np.testing.assert_array_equal(again.transform(z), rot.transform(z))
    assert again.conditions == rot.conditions == [f"P{t}" for t in range(8)]
    assert (again.n_starts, again.seed) == (rot.n_starts, rot.seed) == (4, 0)
    legacy = {k: v for k, v in rot.to_dict().items() if k not in ("n_starts", "seed")}
    old = ShiftRotation.from_dict(legacy)  # saved before the settings were recorded
    assert (old.n_starts, old.seed) == (None, None)
    np.testing.assert_array_equal(old.transform(z), rot.transform(z))
    with pytest.raises(CausalZooError, match=r"shape \(n, 3\)"):
        rot.transform(z[:, :2])


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda z, lab: (z, lab, "nope"), "control='nope' labels no cell"),
        (lambda z, lab: (z[:, :, None], lab, "ctrl"), "must be"),
        (lambda z, lab: (z, lab[:-1], "ctrl"), "one condition label per row"),
        (lambda z, lab: (np.where(np.arange(z.size).reshape(z.shape) == 7, np.nan, z), lab,
                         "ctrl"), "NaN"),
        (lambda z, lab: (z[147:], lab[147:], "ctrl"), "need at least 4"),
        (lambda z, lab: (z[:150], lab[:150], "ctrl"), "No perturbed condition"),
        (lambda z, lab: (np.c_[z, np.ones(len(z))], lab, "ctrl"), "singular"),
    ],
)
def test_errors(change, match):
    z, labels = sparse_latents(3)
    with pytest.raises(CausalZooError, match=match):
        sparse_shift_rotation(*change(z, labels))
