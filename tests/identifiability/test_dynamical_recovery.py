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
SVI steps, best of 3 restarts by final loss (no ground truth used). Scored by Spearman MCC
of all steps against the entangled floor (the larger of the rotation and raw-observation
floors):

* with the true domain labels, the MCC is at least the floor + 0.1, and the learned lag
  graph's SHD is below that of both trivial graphs (empty, full);
* the stationary fit (one domain for every unit, the same model and budget: the dynamics
  alone) scores at least 0.05 below the true labels, and its lag graph a larger SHD, so
  the domains, not only the temporal structure, carry the recovery;
* the shuffled fit (the units' domain labels randomly permuted, the same model and
  budget: domains that carry no information about the noise) scores at least 0.05 below
  the true labels, so the recovery needs the right labels, not only twenty of them;
* a VAE without dynamics or domains (``cz.IVAE`` with one segment on the steps as
  independent points; same guide covariance, observation noise and budget) stays within
  the floor + 0.1.

The stationary and shuffled controls are asserted relative to the true labels, not to the
floor: the dynamics alone partly identify the latents, and the two controls keep 0.84 to
0.89 on seeds 1, 3 and 4, above the floor + 0.1 on seed 3 (both) and seed 4 (shuffled), so
neither falls to the floor on every draw (on seed 0 both do: 0.724 and 0.729).

Measured with ``python benchmarks/recovery_dynamical.py --seed S --noise-scale 1.0
--transition mlp --noise-modulation all --log-scale-shift-rate global --shift-scale 0.01
--steps 5000 --posterior full --observation-scale 0.1 --restarts 3 --control stationary``
(and ``--control vae --control-only``, ``--control shuffled --control-only``); table in
docs/models/dynamical.md, "Recovery, measured". Over generator seeds 0-4 the kept fit
scores 0.951 / 0.973 / 0.701 / 0.950 / 0.946 (max floors 0.778 / 0.805 / 0.763 / 0.768 /
0.764): recovered on 4 of 5 draws (on seed 2 the lowest loss keeps the wrong one of three
fits; one reaches 0.948). Stationary: 0.724 / 0.879 / 0.700 / 0.893 / 0.838; shuffled:
0.729 / 0.883 / 0.677 / 0.887 / 0.884 (0.06 to 0.22 below the true labels on the recovered
seeds); VAE: 0.739 / 0.747 / 0.740 / 0.763 / 0.736. This test runs generator seed 0
(0.951, stationary 0.724, shuffled 0.729, VAE 0.739); the shuffled labels are the
benchmark's permutation (``numpy.random.default_rng(seed + 1)``).

On seed 2 the lowest final loss keeps an entangled fit; ranked by the importance-weighted
marginal likelihood (``fit(restart_criterion="marginal_ll")``) the recovered one is kept
(0.948), with the controls unchanged (stationary 0.700, shuffled 0.677, VAE 0.740), and
every other seed keeps the same fit as by the loss: recovered on 5 of 5 draws. The last
test runs that draw.
"""

from __future__ import annotations

import numpy as np
import pytest

import causalzoo as cz
from causalzoo.testing import assert_does_not_recover, recovery_report

D = 3
GENERATOR = dict(n_domains=20, n_per_domain=150, n_latent=D, noise_scale=1.0, seed=0)
CONFIG = dict(n_latent=D, n_lags=2, n_hidden=64, transition="mlp", noise_modulation="all",
              shift_scale=0.01, posterior="full", observation_scale=0.1)
FIT = dict(max_steps=5000, batch_size=128, learning_rate=5e-3, restarts=3, seed=0,
           progress=False)

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
def true_labels(data):
    seq, x = data
    return recovery_report(_fit_dynamical(x, seq.u), seq)


def test_latents_are_recovered_above_the_entangled_floor(true_labels):
    assert true_labels.score >= true_labels.floor + 0.1, true_labels.describe(0.1)


def test_the_learned_lag_graph_beats_both_trivial_graphs(true_labels):
    """The lag graph (edge probability > 0.5), relabelled by the latents' matching, scored
    by SHD against the truth: 8 true edges of 18, so the empty graph scores 8 and the full
    graph 10; the kept fit measured 5 (6 of the 8 edges found, 3 false ones)."""
    assert true_labels.graph is not None
    assert true_labels.graph_beats_trivial, true_labels.describe()


def test_the_domains_carry_the_recovery_beyond_the_stationary_fit(data, true_labels):
    seq, x = data
    stationary = recovery_report(_fit_dynamical(x, np.zeros_like(seq.u)), seq)
    assert stationary.score <= true_labels.score - 0.05, (
        f"stationary: {stationary.describe()}; true labels: {true_labels.describe()}"
    )
    # and the graph: the stationary fit measured SHD 8 (the empty graph's) against 5
    assert stationary.graph["shd"] > true_labels.graph["shd"], (
        f"stationary: {stationary.describe()}; true labels: {true_labels.describe()}"
    )


def test_shuffled_domain_labels_fall_below_the_true_labels(data, true_labels):
    seq, x = data
    shuffled_u = seq.u[np.random.default_rng(GENERATOR["seed"] + 1).permutation(len(seq.u))]
    assert not np.array_equal(shuffled_u, seq.u)
    shuffled = recovery_report(_fit_dynamical(x, shuffled_u), seq)
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


def test_marginal_likelihood_keeps_the_recovered_fit_where_the_final_loss_does_not():
    """Generator seed 2, the draw the final loss gets wrong: of the three fits (0.948 /
    0.623 / 0.701), the lowest final loss keeps 0.701 (22,638 against 22,775 for the
    recovered fit), below the floor. Ranked by the importance-weighted marginal likelihood
    (``restart_criterion="marginal_ll"``, ``get_marginal_ll``: -16,169 / -17,650 /
    -16,725) the recovered fit is kept: the ELBO's preference came from the guide's gap,
    not from the model's likelihood."""
    seq = cz.identifiability.generators.leap_nonstationary(**{**GENERATOR, "seed": 2})
    model = cz.DynamicalCausalVAE.from_arrays(x=seq.x / seq.x.std(), u=seq.u, **CONFIG)
    model.fit(**FIT, log_scale_shift_rate="global", restart_criterion="marginal_ll")
    report = recovery_report(model, seq)
    assert report.score >= report.floor + 0.1, report.describe(0.1)
    losses = model.fit_info["restart_final_losses"]
    lls = model.fit_info["restart_marginal_lls"]
    # the two criteria disagree on this draw: the loss would have kept another fit
    assert int(np.argmin(losses)) != int(np.argmax(lls)), (losses, lls)
