"""The NB log-density's fast path: values and derivatives against float64 references.

``causalzoo.blocks.likelihoods`` evaluates the NB log-density with its own shift-and-Stirling
``lgamma``/``digamma`` (float32) and a hand-written derivative (``jax.custom_jvp``). These
tests would fail if either were wrong: values against SciPy in float64, derivatives against
JAX's autodiff of NumPyro's ``NegativeBinomial2`` in float64, on a grid that covers zeros,
large counts and small and large dispersions, and on random draws (hypothesis).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.special as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.scipy.special import gammaln

from causalzoo.blocks.likelihoods import (
    NegativeBinomialLog,
    ZeroInflatedNegativeBinomialLog,
    _nb_log_prob,
)
from causalzoo.testing import examples

# Tolerances relative to 1 + |reference|. NumPyro's own float32 NB2 is off by up to 2e-2 on
# the grid below (large theta); the fast path stays within 1e-4.
VALUE_TOL = 2e-4
GRAD_TOL = 1e-3


def _grid():
    xs = np.array([0, 1, 2, 3, 5, 17, 100, 1000, 3e4, 1e6])
    mus = np.logspace(-4, 5, 10)
    thetas = np.logspace(-4, 6, 11)
    x, mu, theta = (a.ravel() for a in np.meshgrid(xs, mus, thetas, indexing="ij"))
    return x, mu, theta


def _reference_log_prob(x, mu, theta):
    x, mu, theta = (np.asarray(a, np.float64) for a in (x, mu, theta))
    return (sp.gammaln(x + theta) - sp.gammaln(theta) - sp.gammaln(x + 1.0)
            + theta * np.log(theta / (theta + mu)) + x * np.log(mu / (theta + mu)))


def _reference_grads(x, log_mu, log_theta):
    """d/d log mu and d/d log theta of NumPyro's NB2 log-density, autodiff in float64."""
    with jax.enable_x64(True):
        def total(lm, lt):
            d = dist.NegativeBinomial2(jnp.exp(lm), jnp.exp(lt))
            return d.log_prob(jnp.asarray(x, jnp.float64)).sum()

        grads = jax.grad(total, argnums=(0, 1))(
            jnp.asarray(log_mu, jnp.float64), jnp.asarray(log_theta, jnp.float64)
        )
        return [np.asarray(g) for g in grads]


def _assert_close(ours, ref, tol):
    ours = np.asarray(ours, np.float64)
    assert np.all(np.isfinite(ours))
    err = np.abs(ours - ref) / (1.0 + np.abs(ref))
    worst = int(np.argmax(err))
    assert err[worst] <= tol, (worst, ours[worst], ref[worst], err[worst])


def test_values_on_grid_match_float64_reference():
    x, mu, theta = _grid()
    f32 = [a.astype(np.float32) for a in (x, mu, theta)]
    ours = NegativeBinomialLog(jnp.log(f32[1]), jnp.log(f32[2])).log_prob(f32[0])
    _assert_close(ours, _reference_log_prob(*f32), VALUE_TOL)


def test_derivatives_on_grid_match_float64_autodiff():
    x, mu, theta = _grid()
    x32, log_mu, log_theta = (np.asarray(a, np.float32) for a in (x, np.log(mu), np.log(theta)))

    def total(lm, lt):
        return NegativeBinomialLog(lm, lt).log_prob(x32).sum()

    ours = jax.grad(total, argnums=(0, 1))(jnp.asarray(log_mu), jnp.asarray(log_theta))
    ref = _reference_grads(x32, log_mu, log_theta)
    for g, r in zip(ours, ref, strict=True):
        _assert_close(g, r, GRAD_TOL)


def test_zero_counts_give_the_closed_form():
    # log p(0) = theta * log(theta / (theta + mu)) exactly; its derivative in log theta is
    # theta * (log(theta / (theta + mu)) + mu / (theta + mu)).
    mu = np.logspace(-3, 4, 15).astype(np.float32)
    theta = np.logspace(-3, 5, 15).astype(np.float32)
    zero = np.zeros_like(mu)
    value, grads = jax.value_and_grad(
        lambda lm, lt: NegativeBinomialLog(lm, lt).log_prob(zero).sum(), argnums=(0, 1)
    )(jnp.log(mu), jnp.log(theta))
    m, t = mu.astype(np.float64), theta.astype(np.float64)
    ref = t * np.log(t / (t + m))
    np.testing.assert_allclose(float(value), ref.sum(), rtol=1e-5)
    np.testing.assert_allclose(grads[0], -t * m / (t + m), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads[1], t * (np.log(t / (t + m)) + m / (t + m)),
                               rtol=1e-4, atol=1e-6)


@settings(max_examples=examples(30), deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    log_mu_scale=st.floats(0.1, 4.0),
    log_theta_center=st.floats(-6.0, 10.0),
    zero_fraction=st.floats(0.0, 0.9),
)
def test_random_draws_match_reference(seed, log_mu_scale, log_theta_center, zero_fraction):
    rng = np.random.default_rng(seed)
    shape = (6, 8)
    log_mu = rng.normal(0.5, log_mu_scale, shape).astype(np.float32)
    log_theta = (log_theta_center + rng.normal(0.0, 1.0, shape[-1])).astype(np.float32)
    mu, theta = np.exp(log_mu.astype(np.float64)), np.exp(log_theta.astype(np.float64))
    x = rng.poisson(rng.gamma(np.minimum(theta, 1e6), mu / np.minimum(theta, 1e6)))
    x = np.where(rng.random(shape) < zero_fraction, 0, x).astype(np.float32)

    def total(lm, lt):
        return NegativeBinomialLog(lm, lt).log_prob(x)

    values = total(jnp.asarray(log_mu), jnp.asarray(log_theta))
    ref = _reference_log_prob(x, np.exp(log_mu), np.exp(log_theta))
    _assert_close(values.ravel(), ref.ravel(), VALUE_TOL)
    grads = jax.grad(lambda lm, lt: total(lm, lt).sum(), argnums=(0, 1))(
        jnp.asarray(log_mu), jnp.asarray(log_theta)
    )
    for g, r in zip(grads, _reference_grads(x, log_mu, log_theta), strict=True):
        _assert_close(np.ravel(g), np.ravel(r), GRAD_TOL)


def test_gene_wise_and_broadcast_concentration_agree():
    # The distribution keeps a (genes,) concentration unbroadcast for speed; a rebuilt one
    # (pytree round trip, as under vmap) uses the broadcast attribute. Same values.
    rng = np.random.default_rng(5)
    log_mu = jnp.asarray(rng.normal(0.0, 2.0, (5, 9)), jnp.float32)
    log_theta = jnp.asarray(rng.normal(0.0, 2.0, 9), jnp.float32)
    x = jnp.asarray(rng.poisson(3.0, (5, 9)), jnp.float32)
    d = NegativeBinomialLog(log_mu, log_theta)
    rebuilt = jax.tree_util.tree_map(lambda a: a, d)
    assert "_unbroadcast" not in rebuilt.__dict__
    np.testing.assert_allclose(rebuilt.log_prob(x), d.log_prob(x), rtol=1e-6, atol=1e-5)
    broadcast = _nb_log_prob(x, log_mu, jnp.broadcast_to(log_theta, (5, 9)))
    np.testing.assert_allclose(broadcast, d.log_prob(x), rtol=1e-6, atol=1e-5)
    per_row = jax.vmap(lambda lm, xx: NegativeBinomialLog(lm, log_theta).log_prob(xx))(log_mu, x)
    np.testing.assert_allclose(per_row, d.log_prob(x), rtol=1e-6, atol=1e-5)


def test_derivative_in_the_count_matches_autodiff_reference():
    # Counts are data, but the density is smooth in a real x: the custom derivative keeps it.
    x = jnp.asarray([0.0, 0.5, 3.0, 40.0, 1200.0], jnp.float32)
    log_mu = jnp.asarray([0.1, 1.0, 2.0, 3.0, 7.0], jnp.float32)
    log_theta = jnp.asarray([-2.0, 0.0, 1.0, 4.0, 2.0], jnp.float32)
    ours = jax.grad(lambda v: _nb_log_prob(v, log_mu, log_theta).sum())(x)
    with jax.enable_x64(True):
        # NumPyro's NB2 warns on a non-integer value, so the reference is the formula itself.
        mu = jnp.exp(jnp.asarray(log_mu, jnp.float64))
        theta = jnp.exp(jnp.asarray(log_theta, jnp.float64))
        ref = jax.grad(lambda v: jnp.sum(
            gammaln(v + theta) - gammaln(theta) - gammaln(v + 1.0)
            + theta * jnp.log(theta / (theta + mu)) + v * jnp.log(mu / (theta + mu))
        ))(jnp.asarray(x, jnp.float64))
    np.testing.assert_allclose(ours, np.asarray(ref), rtol=1e-4, atol=1e-5)


def test_forward_mode_and_second_order_are_defined():
    x = jnp.asarray([0.0, 2.0, 9.0], jnp.float32)
    lm, lt = jnp.asarray([0.5, 1.0, 2.0]), jnp.asarray([0.0, 1.0, -1.0])

    def f(lm):
        return _nb_log_prob(x, lm, lt).sum()

    np.testing.assert_allclose(jax.jacfwd(f)(lm), jax.grad(f)(lm), rtol=1e-6)
    hess = jax.hessian(f)(lm)
    with jax.enable_x64(True):
        ref = jax.hessian(lambda m: dist.NegativeBinomial2(
            jnp.exp(m), jnp.exp(jnp.asarray(lt, jnp.float64))
        ).log_prob(jnp.asarray(x, jnp.float64)).sum())(jnp.asarray(lm, jnp.float64))
    np.testing.assert_allclose(hess, np.asarray(ref), rtol=1e-4, atol=1e-5)


def test_zinb_derivatives_match_numpyro_float64():
    rng = np.random.default_rng(11)
    shape = (4, 7)
    log_mu = rng.normal(1.0, 1.5, shape).astype(np.float32)
    log_theta = rng.normal(0.5, 1.5, shape[-1]).astype(np.float32)
    gate = rng.normal(0.0, 1.5, shape).astype(np.float32)
    x = rng.poisson(np.exp(log_mu)).astype(np.float32)
    x[0] = 0.0

    def ours(lm, lt, g):
        return ZeroInflatedNegativeBinomialLog(lm, lt, g).log_prob(x).sum()

    got = jax.value_and_grad(ours, argnums=(0, 1, 2))(log_mu, log_theta, gate)
    with jax.enable_x64(True):
        def ref(lm, lt, g):
            return dist.ZeroInflatedNegativeBinomial2(
                jnp.exp(lm), jnp.exp(lt), gate_logits=g
            ).log_prob(jnp.asarray(x, jnp.float64)).sum()

        want = jax.value_and_grad(ref, argnums=(0, 1, 2))(
            *(jnp.asarray(a, jnp.float64) for a in (log_mu, log_theta, gate))
        )
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_is_kept(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.asarray([0.0, 3.0, 50.0], dtype)
        d = NegativeBinomialLog(jnp.log(jnp.asarray([1.0, 2.0, 60.0], dtype)),
                                jnp.log(jnp.asarray([0.5, 2.0, 30.0], dtype)))
        out = d.log_prob(x)
        assert out.dtype == dtype
        ref = _reference_log_prob(np.asarray(x), [1.0, 2.0, 60.0], [0.5, 2.0, 30.0])
        np.testing.assert_allclose(np.asarray(out, np.float64), ref,
                                   rtol=1e-10 if dtype == jnp.float64 else 1e-5)


def test_compiled_step_is_deterministic():
    # Same inputs, two separately compiled calls: bit-identical values and gradients.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.poisson(2.0, (64, 50)), jnp.float32)
    lm = jnp.asarray(rng.normal(0.5, 1.0, (64, 50)), jnp.float32)
    lt = jnp.asarray(rng.normal(1.0, 1.0, 50), jnp.float32)

    def f(lm, lt):
        return NegativeBinomialLog(lm, lt).log_prob(x).sum()

    a = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(lm, lt)
    b = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(lm, lt)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
