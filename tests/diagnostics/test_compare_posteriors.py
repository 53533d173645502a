"""compare_posteriors: SVI against NUTS, on a posterior whose mean-field under-dispersion is
known in closed form (the sparse model with its networks fixed: test_nuts_fit.py)."""

from __future__ import annotations

import arviz as az
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from causalzoo import CausalZooError
from causalzoo.diagnostics import compare_posteriors, to_datatree
from causalzoo.inference import fit_nuts

NOISE, PRIOR = 1.0, 10.0


def regression(x, y=None):
    coef = numpyro.sample("coef", dist.Normal(0.0, PRIOR).expand([2]).to_event(1))
    with numpyro.plate("obs", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ coef, NOISE), obs=y)


@pytest.fixture(scope="module")
def problem():
    """Two strongly correlated predictors: the coefficients' posterior correlation is about
    -0.9, so the mean-field optimum's sds are sqrt(1 - rho^2) of the exact ones."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 1))
    x = np.concatenate([base + 0.3 * rng.normal(size=(40, 1)),
                        base + 0.3 * rng.normal(size=(40, 1))], axis=1).astype(np.float32)
    y = (x @ np.array([1.0, -0.5]) + NOISE * rng.normal(size=40)).astype(np.float32)
    precision = x.T.astype(np.float64) @ x / NOISE**2 + np.eye(2) / PRIOR**2
    cov = np.linalg.inv(precision)
    # KL(q || p) over diagonal Gaussians is minimised at sd_i = 1 / sqrt(precision_ii)
    expected_ratio = 1 / np.sqrt(np.diag(precision) * np.diag(cov))
    nuts = fit_nuts(regression, {"x": x, "y": y}, num_warmup=300, num_samples=1000, seed=0,
                    dims={"coef": ["predictors"]}, coords={"predictors": ["x1", "x2"]})
    return x, y, expected_ratio, to_datatree(nuts)


def svi_tree(guide, x, y):
    lr = optax.exponential_decay(0.05, transition_steps=3000, decay_rate=0.01)
    svi = SVI(regression, guide, optax.adam(lr), Trace_ELBO())
    run = svi.run(jax.random.key(1), 3000, x=x, y=y, progress_bar=False)
    draws = guide.sample_posterior(jax.random.key(2), run.params, sample_shape=(4000,))
    return az.from_dict({"posterior": {"coef": np.asarray(draws["coef"])[None]}},
                        dims={"coef": ["predictors"]}, coords={"predictors": ["x1", "x2"]})


def test_finds_the_mean_field_under_dispersion(problem):
    x, y, expected_ratio, nuts_tree = problem
    assert (expected_ratio < 0.5).all()  # the case is one where mean-field VI fails
    table = compare_posteriors(svi_tree(AutoNormal(regression), x, y), nuts_tree)
    assert list(table.index) == ["coef[x1]", "coef[x2]"]
    np.testing.assert_allclose(table["sd_ratio"], expected_ratio, rtol=0.15)
    assert (table["mean_diff_sd"].abs() < 0.3).all()
    # a full-rank guide has no such gap: the comparison must not report one
    full = compare_posteriors(svi_tree(AutoMultivariateNormal(regression), x, y), nuts_tree)
    assert ((full["sd_ratio"] > 0.85) & (full["sd_ratio"] < 1.15)).all()


# The sparse model's SVI posterior against NUTS is in test_nuts_fit.py, next to the other
# users of the (expensive) sparse NUTS fixture: with pytest-xdist --dist loadfile a session
# fixture is built once per worker that needs it.


def test_errors(problem):
    tree = problem[3]
    with pytest.raises(CausalZooError, match="not in both"):
        compare_posteriors(tree, tree, var_names=["nope"])
    with pytest.raises(CausalZooError, match="DataTrees"):
        compare_posteriors(np.zeros(3), tree)
    with pytest.raises(CausalZooError, match="No variable to compare"):
        compare_posteriors(az.from_dict({"posterior": {"other": np.zeros((1, 4))}}), tree)
