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
SVI steps, one fit (fit seed 0) for each arm. Scored by Spearman MCC of all steps against
the entangled floor (the larger of the rotation and raw-observation floors):

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
floor: the dynamics alone partly identify the latents (on this draw both keep 0.87-0.90).

Measured with ``python benchmarks/recovery_dynamical.py --seed S --noise-scale 1.0
--transition mlp --noise-modulation all --log-scale-shift-rate global --shift-scale 0.01
--steps 5000 --posterior full --observation-scale 0.1 --restarts 3 --control stationary``
(and ``--control vae --control-only``, ``--control shuffled --control-only``); tables in
docs/models/dynamical_measurements.md, "Recovery, measured". Over generator seeds 0-4 the
fit kept of three by the final loss is recovered on 4 of 5 draws on one machine and 3 of 5
on another, by the marginal likelihood on 5 of 5 on both ("The same fits on another
machine"). Seed 0, which this test ran until 2026-12-06, recovered through a fit that
scored 0.951 on the first machine and 0.847 on the second. This test runs generator seed
1, whose fits were the same on both machines, and it passed under four instruction-set
caps of XLA's CPU code (``XLA_FLAGS=--xla_cpu_max_isa=SSE4_2 / AVX / AVX2`` and none):
true labels 0.971-0.972 (floor 0.805), stationary 0.873-0.892, shuffled 0.885-0.898, VAE
0.805-0.806; lag graph SHD 1-2 (empty graph 6, full 12), stationary SHD 5. The shuffled
labels are the benchmark's permutation (``numpy.random.default_rng(seed + 1)``).

On seed 2 the three fits scored 0.947-0.948 / 0.623-0.634 / 0.701-0.717 on the two
machines; the marginal likelihood keeps the first on every build measured (0.936-0.951),
the final loss on one build of four. The last test runs that draw with
``restart_criterion="marginal_ll"``.
"""

from __future__ import annotations

import numpy as np
import pytest

import causalzoo as cz
from causalzoo.testing import assert_does_not_recover, recovery_report

D = 3
GENERATOR = dict(n_domains=20, n_per_domain=150, n_latent=D, noise_scale=1.0, seed=1)
CONFIG = dict(n_latent=D, n_lags=2, n_hidden=64, transition="mlp", noise_modulation="all",
              shift_scale=0.01, posterior="full", observation_scale=0.1)
FIT = dict(max_steps=5000, batch_size=128, learning_rate=5e-3, seed=0, progress=False)

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
    report = recovery_report(_fit_dynamical(x, seq.u), seq)
    print(f"true labels: {report.describe(0.1)}")  # shown with pytest -s
    return report


def test_latents_are_recovered_above_the_entangled_floor(true_labels):
    assert true_labels.score >= true_labels.floor + 0.1, true_labels.describe(0.1)


def test_the_learned_lag_graph_beats_both_trivial_graphs(true_labels):
    """The lag graph (edge probability > 0.5), relabelled by the latents' matching, scored
    by SHD against the truth: 6 true edges of 18, so the empty graph scores 6 and the full
    graph 12; the fit measured 1-2 on the four builds (module docstring)."""
    assert true_labels.graph is not None
    assert true_labels.graph_beats_trivial, true_labels.describe()


def test_the_domains_carry_the_recovery_beyond_the_stationary_fit(data, true_labels):
    seq, x = data
    stationary = recovery_report(_fit_dynamical(x, np.zeros_like(seq.u)), seq)
    print(f"stationary: {stationary.describe(0.1)}")
    assert stationary.score <= true_labels.score - 0.05, (
        f"stationary: {stationary.describe()}; true labels: {true_labels.describe()}"
    )
    # and the graph: the stationary fit measured SHD 5 against 1-2 on every build
    assert stationary.graph["shd"] > true_labels.graph["shd"], (
        f"stationary: {stationary.describe()}; true labels: {true_labels.describe()}"
    )


def test_shuffled_domain_labels_fall_below_the_true_labels(data, true_labels):
    seq, x = data
    shuffled_u = seq.u[np.random.default_rng(GENERATOR["seed"] + 1).permutation(len(seq.u))]
    assert not np.array_equal(shuffled_u, seq.u)
    shuffled = recovery_report(_fit_dynamical(x, shuffled_u), seq)
    print(f"shuffled labels: {shuffled.describe(0.1)}")
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
    print(f"VAE: {assert_does_not_recover(z_hat, seq, margin=0.1).describe(0.1)}")


def test_marginal_likelihood_ranking_keeps_a_recovered_fit():
    """Generator seed 2, three restarts ranked by the importance-weighted marginal
    likelihood (``restart_criterion="marginal_ll"``; ``tests/models/test_restarts.py``
    checks that the highest is kept): the kept fit is above the floor + 0.1. The final
    loss keeps an entangled fit on some builds of XLA's CPU code and the recovered one on
    others (module docstring), so which criterion is right there is not asserted."""
    seq = cz.identifiability.generators.leap_nonstationary(**{**GENERATOR, "seed": 2})
    model = cz.DynamicalCausalVAE.from_arrays(x=seq.x / seq.x.std(), u=seq.u, **CONFIG)
    model.fit(**FIT, log_scale_shift_rate="global", restarts=3,
              restart_criterion="marginal_ll")
    report = recovery_report(model, seq)
    losses = model.fit_info["restart_final_losses"]
    lls = model.fit_info["restart_marginal_lls"]
    print(f"seed 2, kept by the marginal likelihood: {report.describe(0.1)}; final losses "
          f"{losses}, marginal likelihoods {lls}")
    assert report.score >= report.floor + 0.1, (report.describe(0.1), losses, lls)
