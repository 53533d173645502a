"""Recovery of the dynamical model's latents on the LEAP non-stationary generator, and the
three controls that say where the recovery comes from.

The claim (LEAP / TDRL, and CITE-VAE's "standard equivalence class"): the time-lagged
latents are identified up to permutation and component-wise invertible maps when the
transition noise changes enough across domains. Setting: ``leap_nonstationary`` with 3
latents, 2 lags, 20 domains x 150 sequences of 6 steps and transition noise of standard
deviation ``U(0, 1)`` per domain and latent (``noise_scale=1.0``; LEAP's 0.1 is far below
what 3,000 sequences resolve, see docs/models/dynamical.md). The model:
``cz.DynamicalCausalVAE`` with MLP mechanisms, every domain shifting every latent's noise
scale (``noise_modulation="all"``, LEAP's noise model), near-zero mean shifts, a
full-covariance per-step guide (a mean-field guide's ELBO prefers rotated solutions, as for
the iVAE), a fixed observation noise of 0.1, the log-scale shifts at the global rate, 5,000
SVI steps, best of 3 restarts ranked by the importance-weighted marginal likelihood
(``restart_criterion="marginal_ll"``; no ground truth used). Scored by Spearman MCC of all
steps against the entangled floor (the larger of the rotation and raw-observation floors):

* with the true domain labels, the MCC is at least the floor + 0.1, and the learned lag
  graph's SHD is below that of both trivial graphs (empty, full);
* on this draw the two restart criteria disagree: the lowest final loss would keep an
  entangled fit, the marginal likelihood keeps the recovered one;
* the stationary fit (one domain for every unit, the same model, budget and criterion:
  the dynamics alone) scores at least 0.05 below the true labels, and its lag graph a
  larger SHD, so the domains, not only the temporal structure, carry the recovery;
* the shuffled fit (the units' domain labels randomly permuted, the same model, budget
  and criterion: domains that carry no information about the noise) scores at least 0.05
  below the true labels, so the recovery needs the right labels, not only twenty of them;
* a VAE without dynamics or domains (``cz.IVAE`` with one segment on the steps as
  independent points; same guide covariance, observation noise, budget and criterion)
  stays within the floor + 0.1.

The stationary and shuffled controls are asserted relative to the true labels, not to the
floor: the dynamics alone partly identify the latents, and the two controls keep 0.84 to
0.89 on seeds 1, 3 and 4, above the floor + 0.1 on seed 3 (both) and seed 4 (shuffled), so
neither falls to the floor on every draw.

Measured with ``python benchmarks/recovery_dynamical.py --seed S --noise-scale 1.0
--transition mlp --noise-modulation all --log-scale-shift-rate global --shift-scale 0.01
--steps 5000 --posterior full --observation-scale 0.1 --restarts 3 --control stationary``
(and ``--control vae --control-only``, ``--control shuffled --control-only``), with
``--restart-criterion marginal_ll``; table in docs/models/dynamical.md, "Recovery,
measured". Over generator seeds 0-4 the fit kept by the lowest final loss scores 0.951 /
0.973 / 0.701 / 0.950 / 0.946 (max floors 0.778 / 0.805 / 0.763 / 0.768 / 0.764):
recovered on 4 of 5 draws. Ranked by the marginal likelihood, seed 2 keeps its recovered
fit (0.948) and every other seed the same fit as by the loss: recovered on 5 of 5 draws.

This test runs generator seed 2, the draw where the criteria disagree: of its three fits
(0.948 / 0.623 / 0.701) the lowest final loss keeps 0.701 (22,638 against 22,775 for the
recovered fit), below the floor; the marginal likelihood (-16,169 / -17,650 / -16,725)
keeps 0.948: the ELBO's preference came from the guide's gap, not from the model's
likelihood. Controls on seed 2 (three fits each; kept by the marginal likelihood, the
same fits as by the loss): stationary 0.818 / 0.574 / 0.700, kept 0.700; shuffled 0.812 /
0.547 / 0.677, kept 0.677 (the benchmark's permutation, ``numpy.random.default_rng(seed +
1)``); VAE 0.722 / 0.740 / 0.604, kept 0.740. Every fit of every control is at least 0.13
below the recovered fit and within the floor (0.763) + 0.1. Lag graph (9 true edges of
18): the recovered fit SHD 3 (8 edges found, 2 false), the stationary and shuffled fits
SHD 5, the empty and the full graph 9. This test re-measured these kept fits on
2026-12-06 (``pytest -s`` prints them): 0.948 (SHD 3), stationary 0.700 (SHD 5),
shuffled 0.677 (SHD 5).
"""

from __future__ import annotations

import numpy as np
import pytest

import causalzoo as cz
from causalzoo.testing import assert_does_not_recover, recovery_report

D = 3
GENERATOR = dict(n_domains=20, n_per_domain=150, n_latent=D, noise_scale=1.0, seed=2)
CONFIG = dict(n_latent=D, n_lags=2, n_hidden=64, transition="mlp", noise_modulation="all",
              shift_scale=0.01, posterior="full", observation_scale=0.1)
FIT = dict(max_steps=5000, batch_size=128, learning_rate=5e-3, restarts=3, seed=0,
           progress=False, restart_criterion="marginal_ll")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    seq = cz.identifiability.generators.leap_nonstationary(**GENERATOR)
    x = seq.x / seq.x.std()
    return seq, x


def _fit_dynamical(x, u):
    model = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **CONFIG)
    return model.fit(**FIT, log_scale_shift_rate="global")


@pytest.fixture(scope="module")
def true_fit(data):
    seq, x = data
    return _fit_dynamical(x, seq.u)


@pytest.fixture(scope="module")
def true_labels(data, true_fit):
    report = recovery_report(true_fit, data[0])
    print(f"\ntrue labels: {report.describe(0.1)}")  # shown by pytest -s
    return report


def test_latents_are_recovered_above_the_entangled_floor(true_labels):
    assert true_labels.score >= true_labels.floor + 0.1, true_labels.describe(0.1)


def test_the_marginal_likelihood_keeps_a_fit_the_final_loss_would_not(true_fit):
    """On this draw the two criteria disagree: the lowest final loss would have kept
    another fit than the highest marginal likelihood (measured: 0.701 against 0.948)."""
    losses = true_fit.fit_info["restart_final_losses"]
    lls = true_fit.fit_info["restart_marginal_lls"]
    assert int(np.argmin(losses)) != int(np.argmax(lls)), (losses, lls)


def test_the_learned_lag_graph_beats_both_trivial_graphs(true_labels):
    """The lag graph (edge probability > 0.5), relabelled by the latents' matching, scored
    by SHD against the truth: 9 true edges of 18, so the empty and the full graph both
    score 9; the kept fit measured 3 (8 of the 9 edges found, 2 false ones)."""
    assert true_labels.graph is not None
    assert true_labels.graph_beats_trivial, true_labels.describe()


def test_the_domains_carry_the_recovery_beyond_the_stationary_fit(data, true_labels):
    seq, x = data
    stationary = recovery_report(_fit_dynamical(x, np.zeros_like(seq.u)), seq)
    print(f"\nstationary: {stationary.describe()}")
    assert stationary.score <= true_labels.score - 0.05, (
        f"stationary: {stationary.describe()}; true labels: {true_labels.describe()}"
    )
    # and the graph: the stationary fit measured SHD 5 against 3
    assert stationary.graph["shd"] > true_labels.graph["shd"], (
        f"stationary: {stationary.describe()}; true labels: {true_labels.describe()}"
    )


def test_shuffled_domain_labels_fall_below_the_true_labels(data, true_labels):
    seq, x = data
    shuffled_u = seq.u[np.random.default_rng(GENERATOR["seed"] + 1).permutation(len(seq.u))]
    assert not np.array_equal(shuffled_u, seq.u)
    shuffled = recovery_report(_fit_dynamical(x, shuffled_u), seq)
    print(f"\nshuffled: {shuffled.describe()}")
    assert shuffled.score <= true_labels.score - 0.05, (
        f"shuffled labels: {shuffled.describe()}; true labels: {true_labels.describe()}"
    )


def test_negative_control_without_dynamics_or_domains_stays_at_the_floor(data):
    seq, x = data
    flat = x.reshape(-1, x.shape[-1])
    vae = cz.IVAE.from_arrays(x=flat, u=np.zeros(len(flat), np.int64), n_latent=D,
                              n_hidden=64, prior_mean=False, posterior="full",
                              observation_scale=0.1)
    vae.fit(**{**FIT, "batch_size": FIT["batch_size"] * x.shape[1]})
    z_hat = vae.get_latent_representation().reshape(seq.z.shape)
    assert_does_not_recover(z_hat, seq, margin=0.1)
