"""CaRiNG's non-invertible process with domains that change its noise: the true domain
labels recover the latents, the hidden one included, where a stationary fit does not.

``generators.caring(n_domains=20, noise_coupled=False)``: CaRiNG's cyclic linear transition
and its observation map, which drops the third latent (revealed only by neighbouring
steps), with LEAP-style domains: latent ``i``'s noise sd in domain ``u`` is ``0.5 m_ui``,
``m_ui ~ U(0, 1)``. The model: linear mechanisms under the Gaussian prior, whose family
keeps a latent law only under maps ``A`` with every ``A D_u A^T`` diagonal (permutations and
scalings for generic noise covariances ``D_u``), and ``encoder_context=2`` so that the
encoder of a step reads its neighbours. 20 domains x 150 sequences of 10 steps, 10,000 SVI
steps on a cosine decay, one fit per arm (about 40 s each on 2 cores).

Asserted on generator seed 2, fit seed 0: with the true labels the Spearman MCC clears the
rotation floor + 0.1 and the hidden latent is carried (held-out kernel R^2 at least 0.9);
the stationary fit (one domain for every sequence) stays below the line and at least 0.1
below the true labels.

What it does not claim: that the domains identify on every draw. Over generator seeds 0-4
with three fits each at 20,000 steps (``docs/models/dynamical_measurements.md``, "CaRiNG
with changing noise"), the fit kept by the final loss clears the line on 4 of 5 draws with
the true labels (9 of 15 single fits) and on 2 of 5 with the stationary model (4 of 15):
the learned lag graph's optimisation moves some stationary fits to the axes too, as on
CaRiNG's own process. Seed 2 is the draw where every labelled fit recovered (0.941 / 0.987 /
0.962) and no stationary one did (0.670 / 0.841 / 0.839; the first loses part of the
latents, kernel R^2 0.68, the other two keep them rotated). At this test's budget, without a
cap and under the AVX2 / AVX / SSE4.2 caps of XLA's CPU code: true labels 0.939 / 0.936 /
0.939 / 0.932 (line 0.912; hidden latent's R^2 0.944-0.946), stationary 0.680 / 0.673 /
0.688 / 0.677 (kernel R^2 0.74 in the benchmark's run of it: this control loses part of the
latents rather than rotating them). The labelled fit's margin over the line is thin
(0.02-0.03).
"""

from __future__ import annotations

import numpy as np
import pytest

import causalzoo as cz
from causalzoo.identifiability import entangled_floor, mcc
from causalzoo.identifiability.r2 import r2_kernel_ridge

pytestmark = pytest.mark.slow

SEED, HIDDEN = 2, 2
MODEL = dict(n_latent=3, n_lags=1, encoder_context=2, transition="linear",
             noise_modulation="all", shift_scale=0.01, posterior="full",
             observation_scale=0.1)
FIT = dict(max_steps=10_000, batch_size=128, learning_rate=5e-3, schedule="cosine",
           log_scale_shift_rate="global", seed=0, progress=False)


@pytest.fixture(scope="module")
def data():
    return cz.identifiability.generators.caring(
        n_units=3000, n_steps=10, noise_scale=0.5, noise_coupled=False, n_domains=20,
        seed=SEED)


@pytest.fixture(scope="module")
def line(data):
    z = data.z.reshape(-1, 3)
    return entangled_floor(z, method="spearman", seed=0)["rotation"] + 0.1


def _fit(data, u):
    model = cz.DynamicalCausalVAE.from_arrays(x=data.x / data.x.std(), u=u, **MODEL)
    z_hat = model.fit(**FIT).get_latent_representation().reshape(-1, 3)
    return mcc(data.z.reshape(-1, 3), z_hat, method="spearman"), z_hat


@pytest.fixture(scope="module")
def labelled(data):
    return _fit(data, data.u)


def test_true_labels_recover_the_latents_and_the_hidden_one(data, line, labelled):
    score, z_hat = labelled
    r2 = r2_kernel_ridge(data.z.reshape(-1, 3), z_hat, per_dimension=True, seed=0)
    print(f"\nCaRiNG with changing noise, true labels: Spearman MCC {score:.3f} (line "
          f"{line:.3f}); kernel R^2 per latent {np.round(r2, 3)}")
    assert score >= line
    assert r2[HIDDEN] >= 0.9


def test_a_stationary_fit_stays_below_the_true_labels(data, line, labelled):
    score, _ = _fit(data, np.zeros_like(data.u))
    print(f"\nCaRiNG with changing noise, stationary: Spearman MCC {score:.3f} (true "
          f"labels {labelled[0]:.3f}, line {line:.3f})")
    assert score < line
    assert score <= labelled[0] - 0.1
