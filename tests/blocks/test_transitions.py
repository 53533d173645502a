"""The lagged transition priors of ``causalzoo.blocks.transitions``: the flow step density
against a brute-force change of variables (finite differences in float64), normalisation,
the exact diagonal Jacobian, reduction to the conditional Gaussian, path log-density against
the full Jacobian of the path-to-noise map, sampling, and the mechanisms' sites."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
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


# ------------------------------------------- linear mean, history-dependent scale (flow)


class _FixedScale(nnx.Module):
    """A transition network with a known output: ``c * tanh(sum(masked window))``, the
    log-scale of ``history_scale=True``."""

    def __init__(self, in_features, out_features, *, rngs):
        assert out_features == 1
        self.c = nnx.Param(jnp.asarray(0.4))

    def __call__(self, inputs):
        return self.c[...] * jnp.tanh(inputs[..., : K * L].sum(-1, keepdims=True))


def _history_scale_program(graph, weights, factory=None):
    def program(window):
        return tr.flow_transition(graph, kind="linear", history_scale=True, factory=factory,
                                  n_hidden=8, n_layers=1)(window)

    return handlers.substitute(program, data={"transition_weights": weights})


def test_history_scale_log_prob_matches_a_hand_computation():
    """kind='linear', history_scale=True: step t is Normal(linear mean + shift, scale *
    exp(s(masked window))) (the shape parameters start at 0, normal base); the path
    log-density is computed by hand with scipy in float64."""
    rng = np.random.default_rng(5)
    graph = jnp.asarray(rng.random((K, L, K)) < 0.6, jnp.float32).at[0, 0, 1].set(0.0)
    weights = jnp.asarray(rng.normal(size=(K, L, K)), jnp.float32)
    program = _history_scale_program(graph, weights, factory=_FixedScale)
    flow_fn = handlers.seed(lambda: tr.flow_transition(
        graph, kind="linear", history_scale=True, factory=_FixedScale), 0)
    flow_fn = handlers.substitute(flow_fn, data={"transition_weights": weights})()
    shift, scale, initial_scale = _args(rng)
    d = FlowLaggedTransition(flow_fn, shift, scale, initial_scale, n_steps=T, n_lags=L)
    z = np.asarray(rng.normal(size=(B, T, K)), np.float64)
    g, w = np.asarray(graph, np.float64), np.asarray(weights, np.float64)
    expected = stats.norm.logpdf(z[:, :L], np.asarray(shift)[:, None],
                                 np.asarray(initial_scale)[:, None]).sum((1, 2))
    for t in range(L, T):
        window = z[:, t - L:t][:, ::-1]  # (B, L, k), lag 1 first
        masked = window[:, None] * g  # (B, k_child, L, k_parent)
        loc = (masked * w).sum((2, 3)) + np.asarray(shift)
        sd = np.asarray(scale) * np.exp(0.4 * np.tanh(masked.sum((2, 3))))
        expected += stats.norm.logpdf(z[:, t], loc, sd).sum(-1)
    np.testing.assert_allclose(d.log_prob(jnp.asarray(z, jnp.float32)), expected, rtol=1e-5)
    # the scale follows the history: the same step with another past scores differently
    window = jnp.asarray(z[:, :L][:, ::-1], jnp.float32)
    p = handlers.seed(program, 0)(window)
    np.testing.assert_allclose(p.log_scale,
                               0.4 * np.tanh((np.asarray(window)[:, None] * g).sum((2, 3))),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(p.skew, 0.0)


def test_history_scale_sites_start_at_the_linear_flow():
    """One network output (the log-scale), starting at 0: at initialisation the prior is
    the linear flow (LEAP-VAR); the mean never has a nonlinear residual."""
    graph = jnp.ones((K, L, K))
    weights = jnp.asarray(np.random.default_rng(6).normal(size=(K, L, K)), jnp.float32)
    window = jnp.asarray(np.random.default_rng(7).normal(size=(5, L, K)), jnp.float32)
    program = _history_scale_program(graph, weights)
    trace = handlers.trace(handlers.seed(program, 0)).get_trace(window)
    out = trace["transition$params"]["value"]["out"]["kernel"]
    assert jnp.shape(out)[-1] == 1
    p = handlers.seed(program, 0)(window)
    linear = handlers.seed(handlers.substitute(
        lambda w: tr.flow_transition(graph, kind="linear")(w),
        data={"transition_weights": weights}), 0)(window)
    for a, b in zip(p, linear, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_history_scale_samples_have_the_history_scale():
    """Prior draws by lax.scan: shape, and the step noise standardised by the history's
    scale is N(0, 1) while unstandardised it is not."""
    rng = np.random.default_rng(8)
    graph = jnp.ones((K, L, K))
    weights = jnp.asarray(0.3 * rng.normal(size=(K, L, K)), jnp.float32)
    flow_fn = handlers.substitute(handlers.seed(lambda: tr.flow_transition(
        graph, kind="linear", history_scale=True, factory=_FixedScale), 0),
        data={"transition_weights": weights})()
    d = FlowLaggedTransition(flow_fn, jnp.zeros((B, K)), jnp.full((B, K), 0.5), n_steps=T,
                             n_lags=L)
    z = d.sample(jax.random.key(1), (3000,))
    assert z.shape == (3000, B, T, K) and np.isfinite(np.asarray(z)).all()
    eps = np.asarray(d.inverse(z)).ravel()
    assert stats.kstest(eps, "norm").pvalue > 1e-3
    p = flow_fn(d.windows(z))
    raw = np.asarray((z[..., L:, :] - p.loc) / 0.5).ravel()
    assert stats.kstest(raw, "norm").pvalue < 1e-3  # the scale does vary with the history


def test_history_scale_in_the_model_under_seed_trace_and_predictive():
    from numpyro.infer import Predictive

    from causalzoo.models.dynamical import DynamicalConfig, dynamical_model

    cfg = DynamicalConfig(n_latent=K, n_lags=L, n_hidden=8, n_layers=1, transition="linear",
                          prior="flow", history_scale=True)
    u = jnp.array([0, 1, 1])
    kw = dict(u=u, n_steps=T, n_features=4, n_domains=2, config=cfg)
    trace = handlers.trace(handlers.seed(dynamical_model, 0)).get_trace(**kw)
    assert jnp.shape(trace["transition$params"]["value"]["out"]["kernel"])[-1] == 1
    assert isinstance(trace["z"]["fn"], FlowLaggedTransition)
    assert np.isfinite(float(trace["z"]["fn"].log_prob(trace["z"]["value"]).sum()))
    draws = Predictive(dynamical_model, num_samples=2)(jax.random.key(0), **kw)
    assert draws["z"].shape == (2, 3, T, K) and draws["x"].shape == (2, 3, T, 4)
    assert DynamicalConfig.from_dict(cfg.to_dict()) == cfg


def test_history_scale_errors():
    graph = jnp.ones((K, L, K))
    with pytest.raises(CausalZooError, match="needs the flow prior"):
        handlers.seed(lambda: tr.transition_mean(graph, kind="linear", history_scale=True),
                      0)()
    with pytest.raises(CausalZooError, match="kind='mlp' learns"):
        handlers.seed(lambda: tr.flow_transition(graph, kind="mlp", history_scale=True), 0)()
    from causalzoo.models.dynamical import DynamicalConfig

    for bad in (dict(transition="mlp", prior="flow"), dict(transition="linear")):
        with pytest.raises(CausalZooError, match="history_scale=True needs transition='lin"):
            DynamicalConfig(history_scale=True, **bad)
    with pytest.raises(CausalZooError, match="history_scale must be True or False"):
        DynamicalConfig(transition="linear", prior="flow", history_scale=1)
