"""Recovery of the dynamical model's latents on the LEAP non-stationary generator.

The claim (LEAP / TDRL, and CITE-VAE's "standard equivalence class"): the time-lagged
latents are identified up to permutation and component-wise invertible maps when the
transition noise changes enough across domains. The test fits ``cz.DynamicalCausalVAE``
(linear lagged mechanisms, domain-dependent noise scales) to sequences from
``leap_nonstationary`` with 3 latents, 2 lags and 20 domains, and scores the posterior means
of all steps, flattened, by Spearman MCC against the entangled floor (the mean MCC of random
rotations of the true latents):

* with the true domain labels the MCC is clearly above the floor;
* the negative control, the same data and budget with shuffled domain labels (so the
  noise scales no longer vary with the label), falls back to the floor.

``benchmarks/recovery_dynamical.py`` runs the same measurement at other sizes and seeds.

NOT YET PASSING, so skipped: at this size the fit does not separate from the floor on every
seed. Measured with ``python benchmarks/recovery_dynamical.py --seed S`` (20 x 150 sequences,
3000 steps, linear mechanisms, N(0, I) history): seed 0, true labels 0.766 (0.885 after the
history) against a floor of 0.749, shuffled 0.627; seed 1, true 0.513 against 0.721,
shuffled 0.522. With ``--steps 15000`` (2026-11-23, about 150 s per fit on the shared
2 cores): seed 0, true 0.913 (0.941 after the history; lag-graph SHD 4 of 8 edges) against
0.749, shuffled 0.574; seed 1, true 0.552 against 0.721, shuffled 0.568. Longer fits recover
seed 0 clearly but not seed 1, so the claim is not yet robust across generator draws.
Diagnosis (2026-12-05, docs/models/dynamical.md "Why recovery fails on seeds 1 and 2"): the
fitted per-domain log noise-scale shifts stay nearly constant across domains (the
identifying signal is not learned), the targets tend to switch off, and with variance-only
shifts (``shift_scale=0.01``) the shuffled-label control scores as high as the true labels
(seed 1: 0.928 vs 0.895), so that control does not isolate the domains' contribution.
No setting tried (cosine schedule, MLP mechanisms, variance-only shifts, targets kept on,
10000 steps) was above the floor on seeds 0, 1 and 2 together.

Second investigation (2026-12-05, docs/models/dynamical.md "Second investigation"): the log
noise-scale shift factors train at the slow network rate by default;
``fit(log_scale_shift_rate="global")`` gives seeds 0 / 1 / 2 0.864 / 0.630 / 0.545 with this
test's settings (floors 0.749 / 0.721 / 0.713), and ``noise_modulation="all"`` (LEAP's
ungated noise model) is available. The MLP numbers below use both. The cause of the
failures: with ``transition="linear"`` the model's prior family does not prefer the true
latents at all. Fitted to the *true* latents (oracle encoder), a random rotation of them fits
better (seed 1: 10.20 vs 9.75 nats per unit; seed 2: 11.00 vs 9.90) and the true labels add
0.02-0.05 nats over shuffled ones, so this test's model cannot show domain-driven recovery
at any length. With MLP mechanisms the truth is preferred (25.55 vs 22.2-23.1) and the
labels add 4.6 nats, but the VAE with ``transition="mlp", noise_modulation="all",
shift_scale=0.01`` reaches the floor on 2 of 5 seeds only (0.718 / 0.925 / 0.524 / 0.780 /
0.682 on seeds 0-4) and its stationary fit (one domain) scores as high (seed 1: 0.947; with
10000 steps seed 1 0.960 vs stationary 0.958, seed 0 0.742 vs stationary 0.862).

When un-skipping: use a model whose prior prefers the truth (MLP mechanisms), and replace the
shuffled control by the honest pair for the claim "the domain-varying noise identifies the
latents": true labels clearly above the floor *and* above the stationary fit (one domain for
all units), and a fit without dynamics or domains that falls to the floor. The thresholds
below are the claim, not to be loosened.
"""

import numpy as np
import pytest

import causalzoo as cz
from causalzoo.identifiability import entangled_floor, mcc

D, STEPS = 3, 3000

pytestmark = pytest.mark.skip(
    reason="dynamical recovery is not yet above the entangled floor at CI size (see the "
    "module docstring and benchmarks/recovery_dynamical.py)"
)


def _fit_and_score(data, u):
    model = cz.DynamicalCausalVAE.from_arrays(
        x=data.x / data.x.std(), u=u, n_latent=D, n_lags=data.n_lags, n_hidden=64,
        transition="linear",
    )
    model.fit(max_steps=STEPS, batch_size=128, seed=0, learning_rate=5e-3, progress=False)
    z_hat = model.get_latent_representation()
    assert z_hat.shape == data.z.shape
    return mcc(data.z.reshape(-1, D), z_hat.reshape(-1, D), method="spearman"), model


@pytest.fixture(scope="module")
def truth():
    data = cz.identifiability.generators.leap_nonstationary(
        n_domains=20, n_per_domain=150, n_latent=D, seed=0
    )
    floor = entangled_floor(data.z.reshape(-1, D), method="spearman", seed=0)["rotation"]
    return data, floor


@pytest.mark.slow
def test_latents_are_recovered_above_the_entangled_floor(truth):
    data, floor = truth
    score, model = _fit_and_score(data, data.u)
    assert score > floor + 0.1, (score, floor)
    # the domains act through the noise scales: every domain targets some latent
    assert model.perturbation_targets().to_numpy().max(axis=1).min() > 0.5


@pytest.mark.slow
def test_negative_control_shuffled_domains_fall_to_the_floor(truth):
    data, floor = truth
    shuffled = data.u[np.random.default_rng(1).permutation(len(data.u))]
    score, _ = _fit_and_score(data, shuffled)
    assert score < floor + 0.05, (score, floor)
