"""NUTS: the analytic posterior of a conjugate model with R-hat, ESS and divergences through
ArviZ, and NUTS against SVI on a tiny latent SCM built from the zoo's blocks."""

from __future__ import annotations

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from causalzoo import CausalZooError
from causalzoo.blocks.mechanisms import LinearGaussianSCM
from causalzoo.diagnostics import to_datatree
from causalzoo.inference import fit_nuts

PRIOR_MEAN, PRIOR_SD, NOISE_SD = 1.0, 2.0, 0.5


def conjugate_model(y=None):
    mu = numpyro.sample("mu", dist.Normal(PRIOR_MEAN, PRIOR_SD))
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, NOISE_SD), obs=y)


def test_nuts_recovers_the_analytic_posterior():
    y = np.random.default_rng(0).normal(0.3, NOISE_SD, size=20).astype(np.float32)
    precision = PRIOR_SD**-2 + y.size / NOISE_SD**2
    post_mean = (PRIOR_MEAN / PRIOR_SD**2 + y.sum() / NOISE_SD**2) / precision
    post_sd = precision**-0.5
    res = fit_nuts(conjugate_model, {"y": y}, num_warmup=200, num_samples=500, num_chains=2)
    dt = to_datatree(res)
    assert res.num_divergences == 0
    assert int(dt["sample_stats"].to_dataset()["diverging"].sum()) == 0
    summary = az.summary(dt)
    ess = float(summary.loc["mu", "ess_bulk"])
    assert float(summary.loc["mu", "r_hat"]) < 1.01
    assert ess > 200
    draws = res.samples["mu"]
    assert draws.shape == (2, 500)
    # within 4 Monte Carlo standard errors of the analytic values
    assert abs(draws.mean() - post_mean) < 4 * post_sd / np.sqrt(ess)
    assert abs(draws.std() - post_sd) < 0.1 * post_sd
    loo = az.loo(dt)
    assert np.isfinite(loo.elpd) and (loo.pareto_k.values < 0.7).all()


def scm_model(design, z=None, n_latent=2):
    """A tiny latent SCM: per-perturbation effects on two response variables with one
    learned edge z0 -> z1, observed with the block's noise."""
    scm = LinearGaussianSCM(graph="lower_triangular", couple_invariant=False, noise_scale=0.5)
    with numpyro.plate("perturbations", design.shape[1]):
        effect = numpyro.sample("effect", dist.Normal(0.0, 1.0).expand([n_latent]).to_event(1))
    weights, _ = scm.model(n_latent, 0)
    with numpyro.plate("cells", design.shape[0]):
        numpyro.sample("z", scm.distribution(design @ effect, weights), obs=z)


def test_svi_and_nuts_agree_on_a_tiny_latent_scm():
    rng = np.random.default_rng(0)
    design = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 120)]
    true_effect = np.array([[1.0, 0.0], [0.0, -1.0], [0.5, 0.5]], np.float32)
    exo = design @ true_effect + 0.5 * rng.normal(size=(120, 2)).astype(np.float32)
    z = exo.copy()
    z[:, 1] += 0.8 * z[:, 0]
    res = fit_nuts(scm_model, {"design": design, "z": z}, num_warmup=200, num_samples=400,
                   num_chains=1)
    nuts = {k: v.reshape(-1, *v.shape[2:]) for k, v in res.samples.items()}
    sds = {}
    for name, guide in (("full_rank", AutoMultivariateNormal(scm_model)),
                        ("mean_field", AutoNormal(scm_model))):
        # a decaying rate, so the final iterate is not Adam noise around the optimum
        lr = optax.exponential_decay(0.02, transition_steps=4000, decay_rate=0.02)
        svi = SVI(scm_model, guide, optax.adam(lr), Trace_ELBO())
        run = svi.run(jax.random.key(1), 4000, design=design, z=z, progress_bar=False)
        draws = guide.sample_posterior(jax.random.key(2), run.params, sample_shape=(2000,))
        for site in ("effect", "scm_weights"):
            vi = np.asarray(draws[site])
            # location error small against the posterior's own width
            shift = np.abs(vi.mean(0) - nuts[site].mean(0)) / nuts[site].std(0)
            assert (shift < 0.5).all(), (name, site, shift)
            sds[name, site] = vi.std(0) / nuts[site].std(0)
    # a full-rank Gaussian guide matches NUTS's spread; the mean-field one under-disperses
    # the edge weight, whose posterior is correlated with the effects (measured ratio ~0.56)
    for site in ("effect", "scm_weights"):
        assert ((sds["full_rank", site] > 0.75) & (sds["full_rank", site] < 1.33)).all()
    assert (sds["mean_field", "scm_weights"] < 0.8).all()
    # and both find the edge z0 -> z1
    assert abs(res.samples["scm_weights"].mean() - 0.8) < 0.1


def test_fit_nuts_errors():
    with pytest.raises(CausalZooError, match="num_samples"):
        fit_nuts(conjugate_model, {"y": jnp.ones(3)}, num_samples=0)
    with pytest.raises(CausalZooError, match="both in data and static_kwargs"):
        fit_nuts(conjugate_model, {"y": jnp.ones(3)}, static_kwargs={"y": 1})
