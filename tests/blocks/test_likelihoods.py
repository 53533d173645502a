"""The count log-densities against NumPyro's reference distributions, moments, the registry."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers

from causalzoo import CausalZooError
from causalzoo.blocks import NB, ZINB, Gaussian, Likelihood, Poisson, get_likelihood
from causalzoo.blocks.likelihoods import (
    LIKELIHOODS,
    NegativeBinomialLog,
    PoissonLog,
    ZeroInflatedNegativeBinomialLog,
)

SHAPE = (7, 11)


def _params(seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.05, 50.0, SHAPE).astype(np.float32)
    theta = rng.uniform(0.2, 30.0, SHAPE[-1]).astype(np.float32)
    gate_logits = rng.normal(0.0, 1.5, SHAPE).astype(np.float32)
    value = rng.poisson(mu).astype(np.float32)
    value[0] = 0.0  # make sure zeros are covered (the ZINB branch)
    value[1, :3] = [1000.0, 250.0, 3.0]  # and far tails
    return mu, theta, gate_logits, value


def test_nb_log_prob_matches_numpyro():
    mu, theta, _, value = _params()
    ours = NegativeBinomialLog(jnp.log(mu), jnp.log(theta))
    ref = dist.NegativeBinomial2(mean=mu, concentration=theta)
    np.testing.assert_allclose(ours.log_prob(value), ref.log_prob(value), rtol=1e-4, atol=1e-4)
    assert ours.batch_shape == SHAPE


def test_zinb_log_prob_matches_numpyro():
    mu, theta, gate_logits, value = _params(1)
    ours = ZeroInflatedNegativeBinomialLog(jnp.log(mu), jnp.log(theta), gate_logits)
    ref = dist.ZeroInflatedNegativeBinomial2(
        mean=mu, concentration=theta, gate_logits=gate_logits
    )
    np.testing.assert_allclose(ours.log_prob(value), ref.log_prob(value), rtol=1e-4, atol=1e-4)
    assert ours.batch_shape == SHAPE


def test_poisson_log_prob_matches_numpyro():
    mu, _, _, value = _params(2)
    ours = PoissonLog(jnp.log(mu))
    ref = dist.Poisson(mu)
    np.testing.assert_allclose(ours.log_prob(value), ref.log_prob(value), rtol=1e-4, atol=1e-4)


def test_log_prob_gradients_finite():
    mu, theta, gate_logits, value = _params(3)

    def f(log_mu, log_theta, gate):
        return ZeroInflatedNegativeBinomialLog(log_mu, log_theta, gate).log_prob(value).sum()

    grads = jax.grad(f, argnums=(0, 1, 2))(jnp.log(mu), jnp.log(theta), jnp.asarray(gate_logits))
    for g in grads:
        assert np.all(np.isfinite(g))


def test_sample_moments():
    # One compiled sampler for all three (compiling the samplers dominates the cost). ZINB's
    # sampler draws from NB's and gates it; a gate logit of -30 is NB to float precision.
    mu = jnp.array([0.5, 3.0, 20.0, 0.5, 3.0, 20.0])
    theta = jnp.array([2.0, 5.0, 1.0, 2.0, 5.0, 1.0])
    gate = jnp.array([-30.0, -30.0, -30.0, -1.0, 0.0, 1.0])
    zinb = ZeroInflatedNegativeBinomialLog(jnp.log(mu), jnp.log(theta), gate)
    nb = NegativeBinomialLog(jnp.log(mu[:3]), jnp.log(theta[:3]))
    poisson = PoissonLog(jnp.log(mu[:3]))

    n = 20_000
    key_zinb, key_poisson = jax.random.split(jax.random.key(0))
    x_zinb = np.asarray(zinb.sample(key_zinb, (n,)))
    x_poisson = np.asarray(poisson.sample(key_poisson, (n,)))
    for d, x in ((zinb, x_zinb), (nb, x_zinb[:, :3]), (poisson, x_poisson)):
        assert x.shape == (n,) + d.batch_shape
        assert np.all(x >= 0) and np.all(x == np.round(x))
        np.testing.assert_allclose(x.mean(0), d.mean, rtol=0.05)
        np.testing.assert_allclose(x.var(0), d.variance, rtol=0.1)
    # the gated columns are NB
    np.testing.assert_allclose(zinb.mean[:3], nb.mean, rtol=1e-6)
    np.testing.assert_allclose(zinb.variance[:3], nb.variance, rtol=1e-5)


def test_moments_agree_with_numpyro():
    mu = jnp.array([0.5, 3.0, 20.0])
    theta = jnp.array([2.0, 5.0, 1.0])
    gate = jnp.array([-1.0, 0.0, 1.0])
    ours = ZeroInflatedNegativeBinomialLog(jnp.log(mu), jnp.log(theta), gate)
    ref = dist.ZeroInflatedNegativeBinomial2(mu, theta, gate_logits=gate)
    np.testing.assert_allclose(ours.mean, ref.mean, rtol=1e-5)
    np.testing.assert_allclose(ours.variance, ref.variance, rtol=1e-5)
    nb = NegativeBinomialLog(jnp.log(mu), jnp.log(theta))
    ref_nb = dist.NegativeBinomial2(mu, theta)
    np.testing.assert_allclose(nb.mean, ref_nb.mean, rtol=1e-5)
    np.testing.assert_allclose(nb.variance, ref_nb.variance, rtol=1e-5)


def test_get_likelihood_names():
    assert set(LIKELIHOODS) == {"nb", "zinb", "poisson", "gaussian"}
    for name, cls in [("nb", NB), ("zinb", ZINB), ("poisson", Poisson), ("gaussian", Gaussian)]:
        lik = get_likelihood(name)
        assert isinstance(lik, cls) and lik.name == name
        assert isinstance(lik, Likelihood)
    assert get_likelihood("NB").name == "nb"
    inst = ZINB()
    assert get_likelihood(inst) is inst
    assert get_likelihood("gaussian").count_data is False
    assert get_likelihood("zinb").n_outputs == 2


@pytest.mark.parametrize("bad", ["negbin", "", 3, None])
def test_get_likelihood_unknown(bad):
    with pytest.raises(CausalZooError, match="Unknown likelihood"):
        get_likelihood(bad)


@pytest.mark.parametrize("name", ["nb", "zinb", "poisson", "gaussian"])
def test_likelihood_blocks_in_a_model(name):
    lik = get_likelihood(name)
    n_cells, n_genes = 4, 6
    out = jax.random.normal(jax.random.key(1), (n_cells, lik.n_outputs * n_genes))
    lib = jnp.full((n_cells,), 100.0)

    def model():
        numpyro.sample("x", lik(out, lib).to_event(1))

    tr = handlers.trace(handlers.seed(model, 0)).get_trace()
    assert tr["x"]["value"].shape == (n_cells, n_genes)
    params = {k for k, v in tr.items() if v["type"] == "param"}
    expected = {"nb": {"log_inverse_dispersion"}, "zinb": {"log_inverse_dispersion"},
                "poisson": set(), "gaussian": {"log_noise_scale"}}[name]
    assert params == expected
    if lik.uses_library:
        # the mean is the library size times softmax of the logits
        d = tr["x"]["fn"].base_dist
        mean = d.mean if name != "zinb" else jnp.exp(d.log_mean)
        np.testing.assert_allclose(np.asarray(mean).sum(-1), 100.0, rtol=1e-4)
