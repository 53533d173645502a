"""Recovery of the sparse perturbation model's latents and masks on its seeded generator.

The claim (PerturbedVAE): z_resp is identified up to permutation and scaling when the
perturbations' sparse shifts vary enough. The tests fit the model to counts from the
generator with 10 perturbations on 3 response latents and check, against the entangled
floor (the MCC of random rotations of the true latents):

* generator seed 0: the response latents' MCC is clearly above the floor as fitted, and the
  masks are recovered;
* generator seed 4: the fit leaves the response latents rotated (MCC 0.728 as fitted, below
  the floor 0.828), and ``response_rotation()`` (whiten by the control cells, rotate to the
  sparsest shifts) recovers them (0.974);
* generator seed 3 with the invariance term (``invariance=10``), fit seed 1: the response
  latents are recovered after the rotation (0.953) and ``z_inv`` carries no perturbation
  information; fit seed 1 is the fit with the lowest final loss of fit seeds 0-2, which is
  what ``fit(restarts=3)`` keeps (fit seed 0 stays below the floor on this draw: 0.734);
* the negative control, the same data with shuffled perturbation labels, falls below the
  floor, as fitted and rotated, and switches every mask off, with and without the term.

``benchmarks/recovery_sparse_perturbation.py`` runs the same measurement at other sizes and
seeds. Over generator seeds 0-4 after 10,000 steps, one fit (fit seed 0) is above the floor
after the rotation on 3 of 5 draws; the lowest-loss fit of three (``--restarts 3``) on 5 of 5,
with or without the invariance term. The tables are in docs/models/sparse_perturbation.md.
"""

import numpy as np
import pytest

import causalzoo as cz
from causalzoo.identifiability import entangled_floor, mask_recovery, mcc


def _fit(data, u, steps, *, invariance=0.0, seed=0):
    model = cz.SparsePerturbationVAE.from_arrays(
        data.x, u, n_latent_invariant=2, n_latent_response=3, n_hidden=64,
        scm_graph="none", couple_invariant=False, mask_probability=0.02, effect_scale=3.0,
        learn_noise=True, invariance=invariance,
    )
    model.fit(max_steps=steps, batch_size=128, seed=seed, learning_rate=3e-3, progress=False,
              early_stopping=False)
    return model


def _linear_r2(y, x):
    x1 = np.c_[x, np.ones(len(x))]
    coef = np.linalg.lstsq(x1, y, rcond=None)[0]
    return 1 - (y - x1 @ coef).var(0) / y.var(0)


def _between_fraction(z, design):
    """Fraction of each column's variance that lies between the conditions."""
    _, groups = np.unique(design, axis=0, return_inverse=True)
    groups = groups.reshape(-1)
    means = np.stack([z[groups == g].mean(0) for g in range(groups.max() + 1)])
    return (np.bincount(groups)[:, None] * (means - z.mean(0)) ** 2).sum(0) / len(z) / z.var(0)


@pytest.fixture(scope="module")
def truth():
    return cz.identifiability.generators.sparse_perturbation(
        n_perturbations=10, n_cells_per_condition=150, n_latent_invariant=2,
        n_latent_response=3, n_genes=100, noise_scale=0.3, seed=0,
    )


@pytest.mark.slow
def test_response_latents_and_masks_are_recovered_above_the_entangled_floor(truth):
    model = _fit(truth, truth.u, steps=10_000)
    z_resp = model.get_latent_representation(block="response")
    score, matching = mcc(truth.z_resp, z_resp, return_matching=True)
    floor = entangled_floor(truth.z_resp, seed=0)["rotation"]
    assert score > floor + 0.05, (score, floor)
    masks = mask_recovery(truth.mask, model.mask_probability().to_numpy(), matching=matching)
    assert masks["auroc"] > 0.75, masks


@pytest.mark.slow
def test_sparse_shift_rotation_recovers_a_rotated_fit():
    truth = cz.identifiability.generators.sparse_perturbation(
        n_perturbations=10, n_cells_per_condition=150, n_latent_invariant=2,
        n_latent_response=3, n_genes=100, noise_scale=0.3, seed=4,
    )
    model = _fit(truth, truth.u, steps=10_000)
    floor = entangled_floor(truth.z_resp, seed=0)["rotation"]
    rotated = model.get_latent_representation(block="response", rotate_response=True)
    assert mcc(truth.z_resp, rotated) > floor + 0.05, (mcc(truth.z_resp, rotated), floor)


@pytest.mark.slow
def test_invariance_term_keeps_z_inv_clean_and_recovers_a_leaky_seed():
    """Generator seed 3: from fit seed 0, with or without the invariance term, the response
    latents stay below the floor (0.719 / 0.734 rotated). With the term, the fit with the
    lowest final loss of fit seeds 0-2 (fit seed 1; benchmark ``--invariance 10 --restarts
    3``) recovers them, and z_inv carries no perturbation information."""
    truth = cz.identifiability.generators.sparse_perturbation(
        n_perturbations=10, n_cells_per_condition=150, n_latent_invariant=2,
        n_latent_response=3, n_genes=100, noise_scale=0.3, seed=3,
    )
    model = _fit(truth, truth.u, steps=10_000, invariance=10.0, seed=1)
    floor = entangled_floor(truth.z_resp, seed=0)["rotation"]
    rotated = model.get_latent_representation(block="response", rotate_response=True)
    assert mcc(truth.z_resp, rotated) > floor + 0.05, (mcc(truth.z_resp, rotated), floor)
    z_inv = model.get_latent_representation(block="invariant")
    assert _between_fraction(z_inv, truth.u).max() < 0.05  # measured 0.004
    assert _linear_r2(truth.z_inv, z_inv).mean() > 0.9  # measured 0.95


@pytest.mark.slow
@pytest.mark.parametrize("invariance", [0.0, 10.0])
def test_negative_control_shuffled_labels_fall_to_the_floor(truth, invariance):
    shuffled = truth.u[np.random.default_rng(1).permutation(len(truth.u))]
    model = _fit(truth, shuffled, steps=3000, invariance=invariance)
    z_resp = model.get_latent_representation(block="response")
    floor = entangled_floor(truth.z_resp, seed=0)["rotation"]
    assert mcc(truth.z_resp, z_resp) < floor
    rotated = model.get_latent_representation(block="response", rotate_response=True)
    assert mcc(truth.z_resp, rotated) < floor
    assert model.mask_probability().to_numpy().max() < 0.5
