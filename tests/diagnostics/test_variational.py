"""Pareto-k (arrays, and a deliberately bad guide through the generic converter), ELBO
convergence and count PPCs."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr

from causalzoo import CausalZooError
from causalzoo.diagnostics import (
    PosteriorSource,
    count_ppc,
    elbo_convergence,
    importance_diagnostics,
    pareto_k,
    to_datatree,
)


def test_pareto_k_of_known_weights():
    rng = np.random.default_rng(0)
    # q = N(0, 1), p = N(0, 1.1^2): q slightly too narrow, light-tailed weights
    z = rng.normal(size=(4, 2000))
    good = -0.5 * (z / 1.1) ** 2 + 0.5 * z**2
    # q = N(0, 0.3^2) for p = N(0, 1): weights with infinite variance, k = 1 - 0.3^2 = 0.91
    z = 0.3 * rng.normal(size=(4, 4000))
    bad = -0.5 * z**2 + 0.5 * (z / 0.3) ** 2
    assert (pareto_k(good) < 0.5).all()
    assert (pareto_k(bad) > 0.7).all()
    with pytest.raises(CausalZooError, match="at least 30"):
        pareto_k(np.zeros(5))
    # the fewest draws with a finite k: ArviZ's tail fit of 25-29 draws returns NaN
    heavy = rng.standard_t(3, size=(20, 30))
    assert np.isfinite(pareto_k(heavy)).all()
    with pytest.raises(CausalZooError, match="at least 30"):
        pareto_k(heavy[:, :29])


def _toy_model(x=None):
    with numpyro.plate("cells", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def _toy_guide(x=None, scale_factor=1.0):
    # the exact posterior: z_n | x_n ~ N(x_n / 2, 1 / sqrt(2)), times scale_factor
    with numpyro.plate("cells", x.shape[0]):
        numpyro.sample("z", dist.Normal(x / 2, scale_factor * jnp.sqrt(0.5)).to_event(1))


@pytest.mark.parametrize("scale_factor, bad", [(1.0, False), (0.3, True)])
def test_pareto_k_flags_a_bad_guide(scale_factor, bad):
    """The converter with a hand-written PosteriorSource (the hook API): the exact guide
    gives small k, a guide three times too narrow gives large k in most cells."""
    x = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32) * np.sqrt(2)
    src = PosteriorSource(
        model=_toy_model,
        guide=lambda x=None: _toy_guide(x, scale_factor),
        params={},
        cell_data={"x": x},
        event_dims={"z": ["latents"], "x": ["genes"]},
    )
    dt = to_datatree(src, num_samples=400, seed=0)
    diag = importance_diagnostics(dt)
    assert diag["n_draws"] == 400
    k = diag["k_cells"].values
    assert k.shape == (40,)
    if bad:
        assert np.isfinite(k).all() and diag["fraction_bad"] > 0.8
    else:
        # exact guide: the weights are constant, log p(x_n) for every draw
        assert diag["fraction_bad"] == 0.0 and (k < 0.5).all()
        lw = dt["sample_stats"].to_dataset()["log_weight"].values[0]
        np.testing.assert_allclose(lw, lw[:1].repeat(400, 0), rtol=1e-4, atol=1e-3)
        # and that constant is the analytic marginal log p(x_n) = log N(x_n; 0, 2 I)
        expected = dist.Normal(0.0, np.sqrt(2.0)).log_prob(x).sum(-1)
        np.testing.assert_allclose(lw[0], expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    ("scale_factor", "n_inner", "atol", "posterior_predictive"),
    # 2000 inner samples: the estimate's sd is about 0.02 (weights with relative variance 0.74)
    [(1.0, 3, 1e-3, False), (1.0, 3, 1e-3, True), (1.5, 2000, 0.1, False)],
)
def test_marginal_log_likelihood_is_log_p_x(scale_factor, n_inner, atol, posterior_predictive):
    """``log_likelihood="marginal"`` estimates log p(x_n) = log N(x_n; 0, 2 I). With the exact
    posterior as guide every inner weight equals it; with a guide 1.5 times too wide the
    weights vary and only their average (over 2000 inner samples) finds it. Both code paths:
    inner samples in one vmap, and the first one apart when predictive draws are kept."""
    x = np.random.default_rng(2).normal(size=(12, 3)).astype(np.float32) * np.sqrt(2)
    src = PosteriorSource(model=_toy_model, guide=lambda x=None: _toy_guide(x, scale_factor),
                          params={}, cell_data={"x": x},
                          event_dims={"z": ["latents"], "x": ["genes"]})
    dt = to_datatree(src, num_samples=5, seed=0, log_likelihood="marginal", n_inner=n_inner,
                     chunk_size=5, posterior_predictive=posterior_predictive)
    ll = dt["log_likelihood"].to_dataset()["x"]
    assert ll.dims == ("chain", "draw", "cells")
    expected = dist.Normal(0.0, np.sqrt(2.0)).log_prob(x).sum(-1)
    np.testing.assert_allclose(ll.values[0], np.broadcast_to(expected, (5, 12)), rtol=1e-4,
                               atol=atol)
    if scale_factor != 1.0:
        # a single inner weight is far off (sd 1.5): the average is what is stored
        lw = dt["sample_stats"].to_dataset()["log_weight"].values[0]
        assert np.abs(lw - expected).mean() > 5 * np.abs(ll.values[0] - expected).mean()
    assert ("posterior_predictive" in dt.children) == posterior_predictive
    # the stored latents are the first inner sample's: distinct across cells and draws
    z = dt["posterior"]["z"].values[0]
    assert np.unique(z.reshape(-1, 3), axis=0).shape[0] == 5 * 12


def test_elbo_convergence():
    rng = np.random.default_rng(0)
    flat = -1000 + rng.normal(size=500)
    rising = np.linspace(-2000, -1000, 500) + rng.normal(size=500)
    assert elbo_convergence(flat)["converged"]
    out = elbo_convergence(rising)
    assert not out["converged"] and out["slope"] > 0 and out["relative_change"] > 1e-2
    with pytest.raises(CausalZooError, match="at least 4"):
        elbo_convergence([1.0, 2.0])


def test_elbo_convergence_reads_the_datatree(datatree, fitted):
    out = elbo_convergence(datatree)
    assert out["n_steps"] == fitted.history["loss"].size
    np.testing.assert_allclose(out["final"], -fitted.history["loss"][-6:].mean(), rtol=1e-6)


def test_count_ppc(datatree):
    ppc = count_ppc(datatree)
    x = datatree["observed_data"].to_dataset()["x"]
    np.testing.assert_allclose(ppc["library_size"], x.sum("genes"))
    np.testing.assert_allclose(ppc["zero_fraction"], (x == 0).mean("cells"))
    for name in ("mean_p", "variance_p", "zero_fraction_p", "library_size_p"):
        assert ((ppc[name] >= 0) & (ppc[name] <= 1)).all()
    assert ppc["mean_rep"].dims == ("chain", "draw", "genes")


def test_count_ppc_of_a_perfect_replicate():
    """Replicates equal to the data give p-values of exactly 1 (replicate >= observed)."""
    x = np.random.default_rng(0).poisson(3.0, size=(30, 5)).astype(np.float32)
    dt = xr.DataTree.from_dict({
        "observed_data": xr.Dataset({"x": (["cells", "genes"], x)}),
        "posterior_predictive": xr.Dataset(
            {"x": (["chain", "draw", "cells", "genes"], np.broadcast_to(x, (1, 4, 30, 5)))}
        ),
    })
    ppc = count_ppc(dt)
    assert (ppc["mean_p"] == 1).all() and (ppc["library_size_p"] == 1).all()
    with pytest.raises(CausalZooError, match="no variable"):
        count_ppc(dt, var_name="y")
