"""CaRiNG's non-invertible process: a window of observations carries the latent that the
observation map drops.

``generators.caring``: 3 latents on a cyclic linear transition (``z_{t,i} = 0.99
z_{t-1,i-1}`` plus noise of sd ``0.1 |z_{t-1,i}|``), of which only the first two are mixed
into the 2 observed features; the third, ``z_{t,2}``, is not a function of ``x_t`` and is
revealed only by neighbouring steps (it becomes ``z_{t+1,0}``). What is claimed here is the
block-level part of CaRiNG's argument, not its identifiability up to component-wise maps:

* with ``encoder_context=2`` (the encoder of step ``t`` reads steps ``t-2..t+2``), the
  estimate carries the hidden latent: the held-out kernel-ridge R^2 of ``z_{t,2}`` from the
  three estimated latents is at least 0.8;
* with ``encoder_context=0`` (the encoder reads ``x_t`` alone, the same model and budget)
  it cannot: that R^2 is at most 0.1, while the two observed latents are carried either way.

The Spearman MCC is printed beside the entangled floor (``pytest -s``) and not asserted:
whether a fit lands on the axes is decided by the learned lag graph's optimisation, not by
the coupled noise, and non-identifiable constant-noise data cross the line about as often
(docs/models/dynamical_measurements.md, "CaRiNG's non-invertible process").

Setting: ``caring(n_units=1000, n_steps=10)``, ``transition="linear", prior="flow",
history_scale=True`` (a linear mean whose noise scale the history sets; with MLP mechanisms
the hidden latent collapses into a copy of an observed one), ``posterior="full"``,
``observation_scale=0.1``, 3,000 SVI steps of 128 sequences, fit seed 0. Measured (scratch
driver: this setting on generator seeds 0-2, R^2 from ``r2_kernel_ridge(per_dimension=
True)``): the hidden latent's R^2 with context 2 is 0.853 / 0.964 / 0.833 (MCC 0.820 /
0.962 / 0.737 against floors 0.812-0.813), with context 0 -0.008 / -0.018 / -0.009 (the
observed latents 0.98-0.997). Under three instruction-set caps of XLA's CPU code
(``XLA_FLAGS=--xla_cpu_max_isa=AVX2 / AVX / SSE4_2``) the context-2 fits give 0.979 /
0.969 / 0.971 on seed 0 and 0.966 / 0.963 / 0.967 on seed 1, but 0.319 / 0.441 / 0.556 on
seed 2, where the fit partly loses the hidden latent: so 2 of 3 draws carry it on every
build. This test runs generator seed 1 (0.963-0.967 on all four builds).
"""

from __future__ import annotations

import numpy as np
import pytest

import causalzoo as cz
from causalzoo.identifiability.r2 import r2_kernel_ridge
from causalzoo.testing import recovery_report

GENERATOR = dict(n_units=1000, n_steps=10, seed=1)
CONFIG = dict(n_latent=3, n_lags=1, transition="linear", prior="flow", history_scale=True,
              shift_scale=0.01, posterior="full", observation_scale=0.1)
FIT = dict(max_steps=3000, batch_size=128, learning_rate=5e-3, seed=0, progress=False)
HIDDEN = 2  # the latent the observation map drops

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    seq = cz.identifiability.generators.caring(**GENERATOR)
    assert seq.x.shape[-1] == 2 and seq.z.shape[-1] == 3  # fewer observations than latents
    return seq


def _r2_per_latent(data, context):
    x = data.x / data.x.std()
    model = cz.DynamicalCausalVAE.from_arrays(
        x=x, u=np.zeros(x.shape[0], np.int64), encoder_context=context, **CONFIG)
    model.fit(**FIT)
    report = recovery_report(model, data)
    z_hat = model.get_latent_representation().reshape(-1, 3)
    r2 = r2_kernel_ridge(data.z.reshape(-1, 3), z_hat, per_dimension=True)
    print(f"encoder_context={context}: R^2 per true latent {np.round(r2, 3).tolist()}; "
          f"{report.describe(0.1)}")  # shown with pytest -s
    return r2


def test_a_window_of_observations_carries_the_hidden_latent(data):
    r2 = _r2_per_latent(data, context=2)
    assert r2[HIDDEN] >= 0.8, r2
    assert np.all(r2 >= 0.8), r2


def test_the_current_observation_alone_cannot_carry_it(data):
    r2 = _r2_per_latent(data, context=0)
    assert r2[HIDDEN] <= 0.1, r2
    assert np.all(np.delete(r2, HIDDEN) >= 0.9), r2  # the observed latents are carried
