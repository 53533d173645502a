"""Sparsity priors (straight-through Bernoulli, Bernoulli mask, horseshoe) and the latent SCM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro import handlers

from causalzoo import CausalZooError
from causalzoo.blocks import (
    BernoulliMask,
    Horseshoe,
    LinearGaussianSCM,
    StraightThroughBernoulli,
    additive_shift,
)
from causalzoo.blocks.mechanisms import weights_from_lower
from causalzoo.blocks.priors import get_sparsity_prior

# ---------------------------------------------------------------- straight-through Bernoulli


def test_straight_through_samples_are_hard_with_right_mean():
    logits = jnp.array([-2.0, -0.5, 0.0, 1.0, 3.0])
    d = StraightThroughBernoulli(logits)
    x = np.asarray(jax.jit(lambda k: d.sample(k, (20_000,)))(jax.random.key(0)))
    assert x.shape == (20_000, 5)
    assert set(np.unique(x).tolist()) <= {0.0, 1.0}
    np.testing.assert_allclose(x.mean(0), jax.nn.sigmoid(logits), atol=0.02)
    np.testing.assert_allclose(d.mean, jax.nn.sigmoid(logits), rtol=1e-6)
    p = jax.nn.sigmoid(logits)
    np.testing.assert_allclose(d.variance, p * (1 - p), rtol=1e-6)


def test_straight_through_gradient_is_nonzero():
    keys = jax.random.split(jax.random.key(1), 64)

    def f(logits, key):
        sample = StraightThroughBernoulli(logits).sample(key)
        return jnp.sum(sample * jnp.arange(1.0, 4.0))

    logits = jnp.array([-0.3, 0.2, 0.8])
    grads = jax.jit(jax.vmap(jax.grad(f), in_axes=(None, 0)))(logits, keys)
    assert np.all(np.isfinite(grads))
    # the relaxed sample passes the gradient: non-zero, and positive on average
    assert np.all(np.abs(np.asarray(grads)).sum(0) > 0)
    assert np.all(np.asarray(grads).mean(0) > 0)
    # ... while the hard forward value carries no gradient of its own
    value = StraightThroughBernoulli(logits).sample(keys[0])
    assert set(np.asarray(value).tolist()) <= {0.0, 1.0}
    rsample = StraightThroughBernoulli(logits).rsample(keys[0])
    np.testing.assert_array_equal(rsample, value)


def test_straight_through_log_prob_equals_bernoulli():
    logits = jnp.array([[-3.0, -0.1, 0.0, 2.5]])
    value = jnp.array([[0.0, 1.0, 1.0, 0.0]])
    ours = StraightThroughBernoulli(logits).log_prob(value)
    ref = dist.Bernoulli(logits=logits).log_prob(value)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    value = 1.0 - value
    np.testing.assert_allclose(
        StraightThroughBernoulli(logits).log_prob(value),
        dist.Bernoulli(logits=logits).log_prob(value),
        rtol=1e-6, atol=1e-6,
    )


def test_straight_through_analytic_kl():
    from numpyro.distributions.kl import kl_divergence

    logits = jnp.array([-3.0, -0.2, 0.0, 1.5])
    probs = jnp.array([0.2, 0.2, 0.5, 0.01])
    q1 = jax.nn.sigmoid(logits)
    expected = q1 * jnp.log(q1 / probs) + (1 - q1) * jnp.log((1 - q1) / (1 - probs))
    kl = kl_divergence(StraightThroughBernoulli(logits), dist.Bernoulli(probs=probs))
    np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-7)
    # through to_event, as the model and guide use it
    kl = kl_divergence(
        StraightThroughBernoulli(logits[None]).to_event(1),
        dist.Bernoulli(probs=probs[None]).to_event(1),
    )
    np.testing.assert_allclose(kl, expected.sum()[None], rtol=1e-5)
    assert np.all(np.asarray(kl) >= 0)


# ---------------------------------------------------------------- sparsity blocks


def _sites(fn, *args):
    tr = handlers.trace(handlers.seed(fn, 0)).get_trace(*args)
    return tr


def test_bernoulli_mask_model_and_guide_shapes():
    block = BernoulliMask(probability=0.3, effect_scale=0.5)
    t, k = 3, 4
    tr = _sites(block.model, t, k)
    assert tr["effect"]["value"].shape == (t, k)
    assert tr["mask"]["value"].shape == (t, k)
    assert set(np.unique(np.asarray(tr["mask"]["value"])).tolist()) <= {0.0, 1.0}
    assert tr["mask"]["fn"].event_shape == (k,) and tr["mask"]["fn"].batch_shape == (t,)
    np.testing.assert_allclose(tr["effect"]["fn"].variance, 0.25, rtol=1e-6)
    np.testing.assert_allclose(tr["mask"]["fn"].mean, 0.3, rtol=1e-6)
    shifts = handlers.seed(block.model, 0)(t, k)
    assert shifts.shape == (t, k)
    np.testing.assert_allclose(shifts, tr["mask"]["value"] * tr["effect"]["value"])

    gtr = _sites(block.guide, t, k)
    assert gtr["effect"]["value"].shape == (t, k)
    assert gtr["mask"]["value"].shape == (t, k)
    assert isinstance(gtr["mask"]["fn"].base_dist, StraightThroughBernoulli)
    params = {n for n, s in gtr.items() if s["type"] == "param"}
    assert params == {"effect_loc", "effect_log_scale", "mask_logits"}
    assert gtr["mask_logits"]["value"].shape == (t, k)
    # the mask starts at its prior
    np.testing.assert_allclose(jax.nn.sigmoid(gtr["mask_logits"]["value"]), 0.3, rtol=1e-5)
    p = block.mask_probability({"mask_logits": jnp.zeros((t, k))})
    np.testing.assert_allclose(p, 0.5)
    np.testing.assert_allclose(block.effect_mean({"effect_loc": jnp.ones((t, k))}), 1.0)


def test_horseshoe_model_and_guide_shapes():
    block = Horseshoe(global_scale=0.2)
    t, k = 3, 4
    tr = _sites(block.model, t, k)
    assert tr["global_shrinkage"]["value"].shape == ()
    assert tr["local_shrinkage"]["value"].shape == (t, k)
    assert tr["effect"]["value"].shape == (t, k)
    assert "mask" not in tr
    gtr = _sites(block.guide, t, k)
    sample_sites = {n for n, s in gtr.items() if s["type"] == "sample"}
    assert sample_sites == {"global_shrinkage", "local_shrinkage", "effect"}
    for name in sample_sites:
        assert gtr[name]["value"].shape == tr[name]["value"].shape
    assert np.all(np.asarray(gtr["local_shrinkage"]["value"]) > 0)
    params = {n: s["value"] for n, s in gtr.items() if s["type"] == "param"}
    prob = np.asarray(block.mask_probability(params))
    assert prob.shape == (t, k) and np.all((prob >= 0) & (prob <= 1))


def test_get_sparsity_prior_and_validation():
    assert isinstance(get_sparsity_prior("bernoulli"), BernoulliMask)
    assert isinstance(get_sparsity_prior("Horseshoe"), Horseshoe)
    inst = BernoulliMask(0.1)
    assert get_sparsity_prior(inst) is inst
    with pytest.raises(CausalZooError):
        get_sparsity_prior("spike_and_slab")
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(CausalZooError):
            BernoulliMask(probability=bad)
    with pytest.raises(CausalZooError):
        BernoulliMask(effect_scale=0.0)
    with pytest.raises(CausalZooError):
        BernoulliMask(temperature=-1.0)
    with pytest.raises(CausalZooError):
        Horseshoe(global_scale=0.0)


# ---------------------------------------------------------------- linear-Gaussian SCM


def test_weights_from_lower_is_strictly_lower():
    k = 5
    entries = jnp.arange(1.0, k * (k - 1) // 2 + 1)
    w = np.asarray(weights_from_lower(entries, k))
    assert w.shape == (k, k)
    np.testing.assert_array_equal(np.triu(w), 0.0)
    np.testing.assert_array_equal(np.sort(w[np.tril_indices(k, -1)]), np.asarray(entries))
    assert LinearGaussianSCM().n_weights(k) == k * (k - 1) // 2
    assert LinearGaussianSCM(graph="none").n_weights(k) == 0


@pytest.mark.parametrize("noise", [1.0, 0.7])
def test_scm_distribution_matches_numpy(noise):
    rng = np.random.default_rng(0)
    k = 4
    w = np.tril(rng.normal(0, 0.7, (k, k)), -1).astype(np.float32)
    mean = rng.normal(size=(6, k)).astype(np.float32)
    d = LinearGaussianSCM(noise_scale=noise).distribution(jnp.asarray(mean), jnp.asarray(w))
    inv = np.linalg.inv(np.eye(k) - w)
    np.testing.assert_allclose(d.mean, mean @ inv.T, rtol=1e-5, atol=1e-5)
    assert d.batch_shape == (6,) and d.event_shape == (k,)
    np.testing.assert_allclose(
        np.asarray(d.covariance_matrix).reshape(-1, k, k)[0], inv @ inv.T * noise**2,
        rtol=1e-5, atol=1e-5,
    )
    # and the density is that of the implied Gaussian
    z = rng.normal(size=(6, k)).astype(np.float32)
    ref = dist.MultivariateNormal(mean @ inv.T, covariance_matrix=inv @ inv.T * noise**2)
    np.testing.assert_allclose(d.log_prob(z), ref.log_prob(z), rtol=1e-4, atol=1e-4)
    # samples have that mean and covariance
    draws = np.asarray(d.sample(jax.random.key(0), (4000,)))
    assert draws.shape == (4000, 6, k)
    np.testing.assert_allclose(draws.mean(0), mean @ inv.T, atol=0.15 * noise * np.abs(inv).max())
    cov = np.cov(draws[:, 0].T)
    np.testing.assert_allclose(cov, inv @ inv.T * noise**2, atol=0.15 * np.abs(inv @ inv.T).max())
    # and the samples are differentiable in the mean (reparameterised)
    grad = jax.grad(lambda m: LinearGaussianSCM(noise_scale=noise).distribution(
        m, jnp.asarray(w)).sample(jax.random.key(1)).sum())(jnp.asarray(mean))
    np.testing.assert_allclose(grad, np.broadcast_to(inv.sum(0), mean.shape), rtol=1e-4)


def test_scm_distribution_is_a_pytree():
    w = jnp.asarray(np.tril(np.full((3, 3), 0.4), -1), jnp.float32)
    mean = jnp.ones((4, 3))
    d = jax.jit(lambda m: LinearGaussianSCM().distribution(m, w))(mean)
    ref = LinearGaussianSCM().distribution(mean, w)
    np.testing.assert_allclose(d.mean, ref.mean, rtol=1e-6)
    z = jnp.zeros((4, 3))
    np.testing.assert_allclose(d.log_prob(z), ref.log_prob(z), rtol=1e-6)


def test_scm_zero_weights_is_independent_normal():
    k = 3
    mean = jnp.array([[1.0, -2.0, 0.5]])
    d = LinearGaussianSCM(graph="none").distribution(mean, jnp.zeros((k, k)))
    z = jnp.array([[0.3, 0.1, -1.0]])
    ref = dist.Normal(mean, 1.0).to_event(1)
    np.testing.assert_allclose(d.log_prob(z), ref.log_prob(z), rtol=1e-6)


def test_scm_model_and_guide_sites():
    scm = LinearGaussianSCM()
    tr = _sites(scm.model, 4, 2)
    assert tr["scm_weights"]["value"].shape == (6,)
    assert tr["invariant_coupling"]["value"].shape == (4, 2)
    w, b = handlers.seed(scm.model, 0)(4, 2)
    assert w.shape == (4, 4) and b.shape == (4, 2)
    np.testing.assert_array_equal(np.triu(np.asarray(w)), 0.0)
    gtr = _sites(scm.guide, 4, 2)
    assert isinstance(gtr["scm_weights"]["fn"].base_dist, dist.Delta)
    assert {n for n, s in gtr.items() if s["type"] == "param"} == {
        "scm_weights_map", "invariant_coupling_map"
    }

    none = LinearGaussianSCM(graph="none", couple_invariant=False)
    tr = _sites(none.model, 4, 2)
    assert "scm_weights" not in tr and "invariant_coupling" not in tr
    w, b = handlers.seed(none.model, 0)(4, 2)
    np.testing.assert_array_equal(w, 0.0)
    np.testing.assert_array_equal(b, 0.0)
    assert len(_sites(none.guide, 4, 2)) == 0
    # graph="none" but coupled: only the coupling site
    tr = _sites(LinearGaussianSCM(graph="none").model, 4, 2)
    assert "scm_weights" not in tr and "invariant_coupling" in tr
    # no invariant block: no coupling site
    assert "invariant_coupling" not in _sites(LinearGaussianSCM().model, 4, 0)


def test_scm_bad_args():
    with pytest.raises(CausalZooError, match="Unknown SCM graph"):
        LinearGaussianSCM(graph="full")
    with pytest.raises(CausalZooError):
        LinearGaussianSCM(weight_scale=0.0)
    with pytest.raises(CausalZooError):
        LinearGaussianSCM(noise_scale=-1.0)


def test_additive_shift():
    design = jnp.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    shifts = jnp.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    out = np.asarray(additive_shift(design, shifts))
    np.testing.assert_allclose(out, [[0, 0, 0], [1, 2, 0], [1, 1, 3]])
