"""fit(..., method="nuts") on the user classes: the iVAE's exact posterior under fixed
networks, the sparse model's effects and SCM weights under fixed masks, R-hat / ESS /
divergences through ArviZ, and the errors."""

from __future__ import annotations

import arviz as az
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.models.ivae import ivae_model


def analytic_ivae_posterior(model, idx):
    """Mean and covariance of p(z | x, u) for an iVAE with a linear decoder and fixed
    Gaussian noise: prior N(mu(u), diag lambda(u)), x = A z + b + N(0, s^2 I)."""
    arrays = {k: jnp.asarray(v[idx]) for k, v in model._arrays().items()}
    k, s = model.config.n_latent, model.config.observation_scale

    def trace(z):
        m = handlers.condition(handlers.substitute(ivae_model, model.params), {"z": z})
        return handlers.trace(handlers.seed(m, 0)).get_trace(**arrays, config=model.config)

    n = idx.size
    tr = trace(jnp.zeros((n, k)))
    prior = tr["z"]["fn"]
    mu, var = np.asarray(prior.loc), np.asarray(prior.covariance_matrix.diagonal(0, -2, -1))
    b = np.asarray(tr["x"]["fn"].base_dist.loc[0])
    a = np.stack([np.asarray(trace(jnp.tile(jnp.eye(k)[i], (n, 1)))["x"]["fn"].base_dist.loc[0])
                  - b for i in range(k)], axis=1)
    x = np.asarray(arrays["x"])
    means, covs = [], []
    for i in range(n):
        precision = np.diag(1 / var[i]) + a.T @ a / s**2
        cov = np.linalg.inv(precision)
        means.append(cov @ (mu[i] / var[i] + a.T @ (x[i] - b) / s**2))
        covs.append(cov)
    return np.array(means), np.array(covs)


def test_ivae_nuts_recovers_the_exact_posterior(ivae):
    """With linear networks p(z | x, u) is Gaussian in closed form: NUTS (networks fixed at
    the SVI fit) must match its means and standard deviations."""
    ivae.fit(method="nuts", subsample=12, num_warmup=300, num_samples=300, seed=1)
    res = ivae.nuts_result
    dt = res.to_datatree()
    assert res.num_divergences == 0
    summary = az.summary(dt, var_names=["z"])
    assert (summary["r_hat"].astype(float) < 1.05).all()
    assert (summary["ess_bulk"].astype(float) > 100).all()
    post = dt["posterior"]["z"]
    assert post.dims == ("chain", "draw", "cells", "latents")
    names = list(post["cells"].values)
    idx = np.array([list(ivae.adata.obs_names).index(c) for c in names])
    mean, cov = analytic_ivae_posterior(ivae, idx)
    sd = np.sqrt(cov.diagonal(0, -2, -1))
    draws = post.values.reshape(-1, idx.size, 2)
    mcse = summary["mcse_mean"].astype(float).to_numpy().reshape(idx.size, 2)
    assert (np.abs(draws.mean(0) - mean) < 5 * mcse + 0.02 * sd).all()
    np.testing.assert_allclose(draws.std(0), sd, rtol=0.2)
    # a constant_data and an observed_data group, and a log-likelihood per point
    assert dt["constant_data"]["u"].dims == ("cells", "aux")
    assert np.isfinite(dt["log_likelihood"]["x"].values).all()


def test_sparse_nuts_with_fixed_masks(sparse_nuts, sparse_masks):
    masks, res = sparse_masks, sparse_nuts
    dt = res.to_datatree()
    post = dt["posterior"].to_dataset()
    assert post["effect"].dims == ("chain", "draw", "perturbations", "latents_response")
    assert list(post["perturbations"].values) == ["P0", "P1", "P2"]
    np.testing.assert_array_equal(dt["constant_data"]["mask"].values, masks)
    np.testing.assert_array_equal(post["shift"].values, post["effect"].values * masks)
    summary = az.summary(dt, var_names=["effect", "scm_weights", "invariant_coupling"])
    assert (summary["r_hat"].astype(float) < 1.05).all()
    assert np.isfinite(summary[["ess_bulk", "ess_tail"]].to_numpy(dtype=float)).all()
    assert int(dt["sample_stats"]["diverging"].sum()) == res.num_divergences
    # an effect whose mask is off does not touch the likelihood: its posterior is the
    # N(0, 1) prior; an effect that is on is pinned down by 30+ cells
    effect = post["effect"].values.reshape(-1, 3, 3)
    off = effect[:, ~masks.astype(bool)]
    assert np.abs(off.mean(0)).max() < 0.35 and np.abs(off.std(0) - 1).max() < 0.25
    on = effect[:, masks.astype(bool)]
    assert on.std(0).max() < 0.5
    assert dt.attrs["latents"] == "encoder" and dt.attrs["masks"] == "fixed"


def test_sparse_model_svi_against_nuts(datatree, sparse_nuts):
    """The sparse model's SVI posterior against NUTS with the networks fixed
    (``compare_posteriors``): W and B are point estimates in the guide (sd 0), which the
    comparison reports as sd_ratio 0."""
    table = cz.diagnostics.compare_posteriors(datatree, sparse_nuts.to_datatree())
    names = {p.split("[")[0] for p in table.index}
    assert {"effect", "scm_weights", "invariant_coupling"} <= names
    assert np.isfinite(table[["mean_diff_sd", "sd_ratio"]].to_numpy()).all()
    point = table[table.index.str.startswith(("scm_weights", "invariant_coupling"))]
    assert (point["sd_approx"] == 0).all() and (point["sd_ratio"] == 0).all()


def test_method_errors(fitted, ivae, adata, small):
    with pytest.raises(CausalZooError, match="method='mcmc' is not supported"):
        fitted.fit(method="mcmc")
    with pytest.raises(CausalZooError, match="NUTS options"):
        fitted.fit(max_steps=1, num_samples=10)
    with pytest.raises(CausalZooError, match="not options"):
        ivae.fit(method="nuts", latents="sample")
    with pytest.raises(CausalZooError, match=r"too much.*max_cells=100"):
        fitted.fit(method="nuts", max_cells=100)
    with pytest.raises(CausalZooError, match="too much"):
        ivae.fit(method="nuts", max_cells=20)
    with pytest.raises(CausalZooError, match="masks must be"):
        fitted.fit(method="nuts", masks=np.ones((2, 3)))
    with pytest.raises(CausalZooError, match="latents="):
        fitted.fit(method="nuts", latents="marginal")
    with pytest.raises(CausalZooError, match="fit it with SVI first"):
        cz.SparsePerturbationVAE(adata, **small).fit(method="nuts")
    # refused before anything runs: an unfitted model (no fit to share with test_entries.py)
    dynamical = cz.DynamicalCausalVAE.from_arrays(x=np.zeros((4, 3, 2), np.float32), n_latent=1)
    with pytest.raises(CausalZooError, match="not available for DynamicalCausalVAE"):
        cz.inference.nuts_fit.fit_by_method(dynamical, "nuts")
