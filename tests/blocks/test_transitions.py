"""The lagged transition priors of ``causalzoo.blocks.transitions``: the flow step density
against a brute-force change of variables (finite differences in float64), normalisation,
the exact diagonal Jacobian, reduction to the conditional Gaussian, path log-density against
the full Jacobian of the path-to-noise map, sampling, and the mechanisms' sites."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from scipy import stats

from causalzoo import CausalZooError
from causalzoo.blocks import transitions as tr
from causalzoo.blocks.transitions import (
    FlowLaggedTransition,
    FlowParams,
    LaggedTransition,
    flow_forward,
    flow_inverse,
    flow_log_prob,
    lagged_transition,
)

SHAPES = [  # loc, scale, skew, log_tail
    (0.0, 1.0, 0.0, 0.0),
    (0.7, 0.4, 0.8, -0.6),
    (-1.2, 2.5, -1.5, 0.7),
]
BASES = {"normal": stats.norm(), "laplace": stats.laplace(scale=1 / np.sqrt(2))}


def _inverse64(z, loc, scale, skew, log_tail):
    return np.sinh(np.exp(log_tail) * np.arcsinh((z - loc) / scale) - skew)


@pytest.mark.parametrize("base", ["normal", "laplace"])
@pytest.mark.parametrize("params", SHAPES)
def test_flow_log_prob_is_a_change_of_variables(params, base):
    """log p(z) = log p_base(r(z)) + log r'(z), with r' by central differences in float64."""
    z = np.linspace(-4, 4, 41)
    h = 1e-5
    deriv = (_inverse64(z + h, *params) - _inverse64(z - h, *params)) / (2 * h)
    brute = BASES[base].logpdf(_inverse64(z, *params)) + np.log(deriv)
    got = flow_log_prob(jnp.asarray(z, jnp.float32), *params, base=base)
    np.testing.assert_allclose(np.asarray(got), brute, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("base", ["normal", "laplace"])
@pytest.mark.parametrize("params", SHAPES)
def test_flow_density_integrates_to_one(params, base):
    z = jnp.linspace(-60.0, 60.0, 240_001)
    density = jnp.exp(flow_log_prob(z, *params, base=base))
    assert float(jnp.trapezoid(density, z)) == pytest.approx(1.0, abs=2e-3)


def test_forward_inverts_the_inverse_and_is_increasing():
    eps = jnp.linspace(-5.0, 5.0, 101)
    for params in SHAPES:
        z = flow_forward(eps, *params)
        assert bool(jnp.all(jnp.diff(z) > 0))
        np.testing.assert_allclose(flow_inverse(z, *params), eps, atol=2e-4)


def test_jacobian_is_diagonal_given_the_history():
    """The step's inverse depends on z_{t,i} only: jacfwd over z_t is diagonal and its
    diagonal is what flow_log_prob uses."""
    rng = np.random.default_rng(0)
    loc, skew, log_tail = (jnp.asarray(rng.normal(size=3), jnp.float32) for _ in range(3))
    scale = jnp.asarray(rng.uniform(0.5, 2.0, size=3), jnp.float32)
    z = jnp.asarray(rng.normal(size=3), jnp.float32)
    jac = jax.jacfwd(lambda v: flow_inverse(v, loc, scale, skew, log_tail))(z)
    np.testing.assert_array_equal(np.asarray(jac - jnp.diag(jnp.diag(jac))), 0.0)
    expected = stats.norm.logpdf(flow_inverse(z, loc, scale, skew, log_tail)) + np.log(
        np.diag(jac))
    np.testing.assert_allclose(flow_log_prob(z, loc, scale, skew, log_tail), expected,
                               rtol=1e-5)


# ---------------------------------------------------------------- the path distributions

K, L, T, B = 2, 2, 6, 3


def _mean_fn(window):  # (..., L, k) -> (..., k): a nonlinear lagged mechanism
    return jnp.tanh(0.8 * window[..., 0, :] - 0.3 * window[..., 1, ::-1])


def _flow_fn(window):
    """A history-dependent inverse: mean, log-scale, skew and tail all move with the past."""
    lag1 = window[..., 0, :]
    return FlowParams(_mean_fn(window), 0.3 * jnp.sin(lag1), 0.5 * jnp.tanh(lag1) + 0.2,
                      0.4 * jnp.cos(window[..., 1, :]) - 0.3)


def _args(rng):
    shift = jnp.asarray(rng.normal(size=(B, K)), jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 1.5, size=(B, K)), jnp.float32)
    initial_scale = jnp.asarray(rng.uniform(0.5, 1.5, size=(B, K)), jnp.float32)
    return shift, scale, initial_scale


def test_affine_flow_reduces_to_the_gaussian_prior():
    rng = np.random.default_rng(1)
    args = _args(rng)

    def affine(window):
        zero = jnp.zeros_like(window[..., 0, :])
        return FlowParams(_mean_fn(window), zero, zero, zero)

    z = jnp.asarray(rng.normal(size=(4, B, T, K)), jnp.float32)
    for initial_shift in (True, False):
        kw = dict(initial_shift=initial_shift, n_steps=T, n_lags=L)
        gauss = LaggedTransition(_mean_fn, *args, **kw)
        flow = FlowLaggedTransition(affine, *args, **kw)
        np.testing.assert_allclose(flow.step_log_prob(z), gauss.step_log_prob(z), rtol=1e-6,
                                   atol=1e-5)
        # same noise, same draw
        np.testing.assert_allclose(flow.sample(jax.random.key(3), (2,)),
                                   gauss.sample(jax.random.key(3), (2,)), rtol=1e-5, atol=1e-5)


def test_path_log_prob_is_the_full_change_of_variables():
    """The path-to-noise map (z_{L:T} -> eps_{L:T}, the history fixed) is triangular; its
    full Jacobian's log-determinant (jacfwd + slogdet) plus the base and initial terms must
    equal log_prob."""
    rng = np.random.default_rng(2)
    args = _args(rng)
    d = FlowLaggedTransition(_flow_fn, *args, base="laplace", n_steps=T, n_lags=L)
    z = jnp.asarray(rng.normal(size=(B, T, K)), jnp.float32)
    for b in range(B):
        sub = FlowLaggedTransition(_flow_fn, *(a[b] for a in args), base="laplace",
                                   n_steps=T, n_lags=L)

        def noise(later, b=b, sub=sub):
            path = jnp.concatenate([z[b, :L], later.reshape(T - L, K)], axis=0)
            return sub.inverse(path).reshape(-1)

        later = z[b, L:].reshape(-1)
        jac = jax.jacfwd(noise)(later)
        assert np.allclose(np.triu(np.asarray(jac), 1), 0.0)  # each step sees only the past
        sign, logdet = np.linalg.slogdet(np.asarray(jac, np.float64))
        assert sign > 0
        eps = np.asarray(noise(later))
        initial = stats.norm.logpdf(z[b, :L], args[0][b], args[2][b]).sum()
        expected = initial + BASES["laplace"].logpdf(eps).sum() + logdet
        assert float(d.log_prob(z)[b]) == pytest.approx(expected, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("base", ["normal", "laplace"])
def test_flow_samples_invert_to_the_base_noise(base):
    rng = np.random.default_rng(3)
    d = FlowLaggedTransition(_flow_fn, *_args(rng), base=base, n_steps=T, n_lags=L)
    z = d.sample(jax.random.key(0), (2000,))
    assert z.shape == (2000, B, T, K) and np.isfinite(np.asarray(z)).all()
    eps = np.asarray(d.inverse(z)).ravel()
    assert stats.kstest(eps, BASES[base].cdf).pvalue > 1e-3
    other = "laplace" if base == "normal" else "normal"
    assert stats.kstest(eps, BASES[other].cdf).pvalue < 1e-3


def test_normal_to_base_matches_quantiles():
    n = jnp.linspace(-3.0, 3.0, 13)
    np.testing.assert_array_equal(tr.normal_to_base(n, "normal"), n)
    expected = BASES["laplace"].ppf(stats.norm.cdf(np.asarray(n, np.float64)))
    np.testing.assert_allclose(tr.normal_to_base(n, "laplace"), expected, rtol=1e-5, atol=1e-6)
    assert np.isfinite(np.asarray(tr.normal_to_base(jnp.array([-9.0, 9.0]), "laplace"))).all()


def test_prior_names_and_errors():
    shift, scale = jnp.zeros((2, K)), jnp.ones((2, K))
    assert isinstance(lagged_transition("gaussian", _mean_fn, shift, scale, n_steps=T,
                                        n_lags=L), LaggedTransition)
    assert isinstance(lagged_transition("flow", _flow_fn, shift, scale, base="laplace",
                                        n_steps=T, n_lags=L), FlowLaggedTransition)
    with pytest.raises(CausalZooError, match="prior='nope'"):
        lagged_transition("nope", _mean_fn, shift, scale, n_steps=T, n_lags=L)
    with pytest.raises(CausalZooError, match="flow_base='cauchy'"):
        FlowLaggedTransition(_flow_fn, shift, scale, base="cauchy", n_steps=T, n_lags=L)
    with pytest.raises(CausalZooError, match="too short"):
        FlowLaggedTransition(_flow_fn, shift, scale, n_steps=L, n_lags=L)


# ---------------------------------------------------------------- mechanisms in a model


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_flow_transition_sites_and_gaussian_start(kind):
    graph = jnp.ones((K, L, K))
    window = jnp.asarray(np.random.default_rng(4).normal(size=(5, L, K)), jnp.float32)

    def flow_program():
        return tr.flow_transition(graph, kind=kind, n_hidden=8, n_layers=1)(window)

    def mean_program():
        return tr.transition_mean(graph, kind=kind, n_hidden=8, n_layers=1)(window)

    trace = handlers.trace(handlers.seed(flow_program, 0)).get_trace()
    params = {k: jax.tree_util.tree_map(jnp.shape, v["value"]) for k, v in trace.items()
              if v["type"] == "param"}
    assert params["flow_skew"] == (K,) and params["flow_log_tail"] == (K,)
    assert params["transition_weights"] == (K, L, K)
    assert ("transition$params" in params) == (kind == "mlp")
    if kind == "mlp":  # four outputs per variable: mean, log-scale, skew, tail residuals
        out = trace["transition$params"]["value"]["out"]["kernel"]
        assert jnp.shape(out)[-1] == 4
    flow, mean = handlers.seed(flow_program, 0)(), handlers.seed(mean_program, 0)()
    assert all(a.shape == (5, K) for a in flow)
    # at initialisation the flow is the Gaussian: same mean, no history scale, no shape
    np.testing.assert_allclose(flow.loc, mean, atol=1e-6)
    for a in flow[1:]:
        np.testing.assert_array_equal(a, 0.0)
