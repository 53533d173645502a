"""``benchmarks/recovery_dynamical.py --staged``: the staged snapshot fit's first stage
(``staged_init``) really hands the iVAE's networks to the snapshot model: the decoder is
the iVAE's, and the snapshot encoder, which reads the expression only, gives the iVAE's
posterior means, which read the (domain, step) segment too. The measured outcome (no
recovery) is in ``docs/models/dynamical_measurements.md``; this guards the tool that measured it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anndata
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from numpyro import handlers

import causalzoo as cz
from causalzoo.models.ivae import ivae_encode

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def recovery_dynamical():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import recovery_dynamical

        yield recovery_dynamical
    finally:
        sys.path.remove(str(BENCH_DIR))


def test_staged_init_hands_the_ivae_networks_to_the_snapshot_model(recovery_dynamical):
    rd = recovery_dynamical
    args = argparse.Namespace(
        generator="leap", domains=3, per_domain=60, latents=2, lags=1, n_steps=4,
        noise_scale=1.0, seed=0, noise="gaussian", min_step=0, self_lags_only=False,
        leap_dynamics="leaky_relu")
    _, snap, scale = rd.snapshot_data(args)
    obs = pd.DataFrame({"step": snap.step, "domain": snap.u.astype(str)},
                       index=[f"c{i}" for i in range(len(snap.step))])
    adata = anndata.AnnData(snap.x / scale, obs=obs)
    cz.DynamicalCausalVAE.setup_anndata(adata, time_key="step", perturbation_key="domain",
                                        time_step=1)
    model = cz.DynamicalCausalVAE(adata, n_latent=2, n_lags=1, n_particles=8, n_hidden=16,
                                  n_layers=1, transition="linear", posterior="full",
                                  observation_scale=0.1)
    params, record = rd.staged_init(model, seed=0, steps=300, batch_size=60,
                                    learning_rate=1e-2)
    teacher = record["ivae_params"]
    assert sorted(params) == ["decoder$params", "encoder$params"]
    assert np.isfinite(record["final_loss"])
    leaves = [jax.tree_util.tree_leaves(p["decoder$params"]) for p in (params, teacher)]
    assert len(leaves[0]) == len(leaves[1]) == 4  # one hidden layer and the output layer
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the segment columns are gone from the snapshot encoder's input
    assert params["encoder$params"]["hidden"][0]["kernel"].shape[0] == snap.x.shape[1]
    loc_t, _ = handlers.substitute(handlers.seed(ivae_encode, 0), teacher)(
        jnp.asarray(model.x), jnp.asarray(record["segment"]), record["ivae_config"])
    z_teacher = np.asarray(loc_t)
    spread = z_teacher.std(0)

    def encode(p):
        z, _ = model._encoder()(p, jnp.asarray(model.x), jnp.asarray(model.time_index))
        return np.asarray(z)

    model.params = params
    assert (np.abs(encode(params) - z_teacher).mean(0) < 0.1 * spread).all()
    # the encoder the snapshot fit would otherwise start from is far from it
    fresh = cz.DynamicalCausalVAE(adata, n_latent=2, n_lags=1, n_particles=8, n_hidden=16,
                                  n_layers=1, transition="linear", posterior="full",
                                  observation_scale=0.1)
    fresh.fit(max_steps=1, batch_size=60, progress=False)
    z_fresh = encode({"encoder$params": fresh.params["encoder$params"]})
    assert (np.abs(z_fresh - z_teacher).mean(0) > 0.3 * spread).any()
