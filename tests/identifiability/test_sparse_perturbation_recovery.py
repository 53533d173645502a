"""What the sparse perturbation model recovers on its seeded generator, against controls.

Full recovery of z_resp above the entangled floor is not reached yet (see
benchmarks/recovery_sparse_perturbation.py for the measured numbers); these tests pin what
does hold: the sparse masks respond to real perturbation structure and collapse to the prior
when the labels carry none (the negative control).
"""

import numpy as np
import pytest

import causalzoo as cz


def _fit(shuffle: bool):
    data = cz.identifiability.generators.sparse_perturbation(
        n_perturbations=4, n_cells_per_condition=80, n_latent_invariant=2,
        n_latent_response=3, n_genes=60, noise_scale=0.3, seed=3,
    )
    u = data.u
    if shuffle:
        u = u[np.random.default_rng(0).permutation(len(u))]
    model = cz.SparsePerturbationVAE.from_arrays(
        data.x, u, n_latent_invariant=2, n_latent_response=3, n_hidden=32,
        scm_graph="none", couple_invariant=False, mask_probability=0.02, effect_scale=3.0,
    )
    model.fit(max_steps=800, batch_size=64, seed=0, progress=False, early_stopping=False)
    return data, model.mask_probability().to_numpy()


@pytest.mark.slow
def test_masks_switch_on_for_real_perturbations_and_stay_off_for_shuffled_labels():
    _, real = _fit(shuffle=False)
    _, shuffled = _fit(shuffle=True)
    # Negative control: labels without structure leave every mask at (or below) the prior.
    assert shuffled.max() < 0.5
    # Real labels: masks switch on where the structure is; after this short fit not yet on
    # every perturbation (the full recovery is what benchmarks/ measures).
    assert (real > 0.5).sum() > (shuffled > 0.5).sum()
    assert real.max(axis=1).mean() > 2 * shuffled.max(axis=1).mean()
