"""Acyclicity constraints: zero exactly on DAGs, positive with a gradient on any cycle."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpyro.infer.util import log_density

from causalzoo import CausalZooError
from causalzoo.blocks import dag
from causalzoo.testing import examples

METHODS = ["exponential", "binomial", "power_series", "log_det"]


def _random_dag(rng: np.random.Generator, d: int, density: float) -> np.ndarray:
    """Strictly lower-triangular weights, then a random relabelling of the nodes."""
    w = np.tril(rng.uniform(0.3, 1.0, (d, d)) * rng.choice([-1, 1], (d, d)), k=-1)
    w *= rng.random((d, d)) < density
    perm = rng.permutation(d)
    return w[np.ix_(perm, perm)]


def _log_det_scale(w: np.ndarray) -> float:
    return float(np.max(np.abs(np.linalg.eigvals(w * w)))) + 1.0


def _scale(method: str, w: np.ndarray) -> float:
    return _log_det_scale(w) if method == "log_det" else 1.0


@functools.cache
def _value_and_grad(method: str):
    """Compiled once per method (and shape): eager ``expm`` under ``grad`` is slow."""

    def h(w, s):
        return dag.log_det(w, s) if method == "log_det" else dag.acyclicity(w, method)

    return jax.jit(jax.value_and_grad(h))


# One size keeps it to one compilation per method; sparse draws leave isolated nodes, so
# smaller graphs are covered as sub-graphs.
D = 6
graphs = st.tuples(st.just(D), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))


@settings(max_examples=examples(25), deadline=None)
@given(graph=graphs)
def test_zero_with_zero_gradient_on_every_dag(graph):
    d, density, seed = graph
    w = _random_dag(np.random.default_rng(seed), d, density)
    with jax.enable_x64(True):
        for method in METHODS:
            h, g = _value_and_grad(method)(jnp.asarray(w), _scale(method, w))
            assert abs(float(h)) < 1e-10, method
            np.testing.assert_allclose(np.asarray(g), 0.0, atol=1e-10, err_msg=method)


@settings(max_examples=examples(25), deadline=None)
@given(graph=graphs, data=st.data())
def test_positive_with_nonzero_gradient_once_a_cycle_exists(graph, data):
    d, density, seed = graph
    rng = np.random.default_rng(seed)
    w = _random_dag(rng, d, density)
    length = data.draw(st.integers(1, d), label="cycle length")
    nodes = rng.permutation(d)[:length]
    for a, b in zip(nodes, np.roll(nodes, -1), strict=True):  # a -> b, closing back to nodes[0]
        w[a, b] = rng.uniform(0.3, 1.0) * rng.choice([-1, 1])
    with jax.enable_x64(True):
        for method in METHODS:
            h, g = _value_and_grad(method)(jnp.asarray(w), _scale(method, w))
            assert float(h) > 0, (method, w)
            g = np.asarray(g)
            # every edge of the cycle is pushed towards 0
            for a, b in zip(nodes, np.roll(nodes, -1), strict=True):
                assert g[a, b] * w[a, b] > 0, (method, a, b)


def _analytic_gradients(w: np.ndarray, s: float) -> dict[str, np.ndarray]:
    from scipy.linalg import expm

    d = w.shape[0]
    b = w * w
    eye = np.eye(d)
    series = sum(k * np.linalg.matrix_power(b, k - 1) for k in range(1, d + 1))
    return {
        "exponential": 2 * w * expm(b).T,
        "binomial": 2 * w * np.linalg.matrix_power(eye + b / d, d - 1).T,
        "power_series": 2 * w * series.T,
        "log_det": 2 * w * np.linalg.inv(s * eye - b).T,
    }


@pytest.mark.parametrize("d", [1, D])
def test_values_and_gradients_match_closed_forms(d):
    from scipy.linalg import expm

    rng = np.random.default_rng(d)
    w = rng.normal(0.0, 0.4, (d, d))
    b = w * w
    s = _log_det_scale(w)
    values = {
        "exponential": np.trace(expm(b)) - d,
        "binomial": np.trace(np.linalg.matrix_power(np.eye(d) + b / d, d)) - d,
        "power_series": sum(np.trace(np.linalg.matrix_power(b, k)) for k in range(1, d + 1)),
        "log_det": -np.linalg.slogdet(s * np.eye(d) - b)[1] + d * np.log(s),
    }
    grads = _analytic_gradients(w, s)
    with jax.enable_x64(True):
        for method in METHODS:
            h, g = _value_and_grad(method)(jnp.asarray(w), s if method == "log_det" else 1.0)
            assert float(h) == pytest.approx(values[method], rel=1e-9, abs=1e-12), method
            np.testing.assert_allclose(np.asarray(g), grads[method], rtol=1e-8, atol=1e-12,
                                       err_msg=method)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 6, 7, 12, 13])
def test_power_series_doubling_equals_the_plain_sum(order):
    rng = np.random.default_rng(order)
    w = rng.normal(0.0, 0.5, (5, 5))
    b = w * w
    ref = sum(np.trace(np.linalg.matrix_power(b, k)) for k in range(1, order + 1))
    with jax.enable_x64(True):
        h = float(dag.power_series(jnp.asarray(w), order=order))
    assert h == pytest.approx(ref, rel=1e-12)


def test_polynomial_constraints_are_exactly_zero_on_a_dag_in_float32():
    w = jnp.asarray(_random_dag(np.random.default_rng(0), D, 0.8), dtype=jnp.float32)
    assert float(dag.binomial(w)) == 0.0
    assert float(dag.power_series(w)) == 0.0
    for method in ("exponential", "log_det"):
        h, _ = _value_and_grad(method)(w, _scale(method, np.asarray(w)))
        assert abs(float(h)) < 1e-5, method


def test_short_truncation_misses_long_cycles():
    cycle = jnp.roll(jnp.eye(4), 1, axis=1)  # 0 -> 1 -> 2 -> 3 -> 0
    assert float(dag.power_series(cycle, order=3)) == 0.0
    assert float(dag.power_series(cycle)) == pytest.approx(4.0)


def test_log_det_outside_its_domain_is_inf():
    big = jnp.array([[0.0, 2.0], [2.0, 0.0]])  # spectral radius of W∘W is 4 > s = 1
    assert np.isinf(float(dag.log_det(big)))
    assert np.isfinite(float(dag.log_det(big, s=5.0)))


def test_factor_adds_the_negative_penalty_and_jits():
    w = jnp.array([[0.0, 0.8, 0.0], [0.0, 0.0, 0.7], [0.6, 0.0, 0.0]])

    def model(w):
        dag.dag_factor("acyclic", w, method="binomial", alpha=0.5, rho=3.0)

    h = float(dag.binomial(w))
    expected = -(0.5 * h + 1.5 * h * h)
    lp = jax.jit(lambda a: log_density(model, (a,), {}, {})[0])(w)
    assert float(lp) == pytest.approx(expected, rel=1e-5)
    assert float(log_density(model, (jnp.triu(w),), {}, {})[0]) == 0.0


def test_gradient_descent_on_the_penalty_breaks_the_cycle():
    w0 = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.3, 0.0, 0.0]])
    grad = jax.jit(jax.grad(lambda a: dag.dag_penalty(a, "power_series", alpha=1.0, rho=10.0)))
    w = w0
    for _ in range(300):
        w = w - 0.05 * grad(w)
    assert float(dag.power_series(w)) < 1e-6 * float(dag.power_series(w0))
    # the weakest edge of the cycle is the one that shrinks most
    assert abs(float(w[2, 0])) < abs(float(w[0, 1]))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: dag.exponential(jnp.zeros((2, 3))), "square"),
        (lambda: dag.acyclicity(jnp.zeros((2, 2)), "notears"), "notears"),
        (lambda: dag.power_series(jnp.zeros((2, 2)), order=0), "order"),
        (lambda: dag.log_det(jnp.zeros((2, 2)), s=0.0), "s=0.0"),
        (lambda: dag.dag_penalty(jnp.zeros((2, 2)), alpha=-1.0), "alpha"),
    ],
)
def test_errors_name_the_problem(call, match):
    with pytest.raises(CausalZooError, match=match):
        call()


def test_integer_adjacency_is_accepted():
    assert float(dag.power_series(jnp.array([[0, 1], [1, 0]]))) == pytest.approx(2.0)


def test_factor_makes_svi_learn_an_acyclic_latent_graph():
    """A data term that wants a 3-cycle, plus the factor: SVI keeps the strong edges and
    drops the weakest edge of the cycle."""
    import numpyro
    import optax
    from numpyro.infer import SVI, Trace_ELBO

    target = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.9], [0.4, 0.0, 0.0]])

    def model():
        w = numpyro.param("W", jnp.full((3, 3), 0.1) * (1 - jnp.eye(3)))
        numpyro.factor("fit", -jnp.sum((w - target) ** 2))
        dag.dag_factor("acyclic", w, method="power_series", alpha=5.0, rho=50.0)

    svi = SVI(model, lambda: None, optax.adam(0.05), Trace_ELBO())
    w = svi.run(jax.random.key(0), 600, progress_bar=False).params["W"]
    # a penalty with fixed alpha and rho leaves a small residual, 100x below the target's
    assert float(dag.power_series(w)) < 0.01 * float(dag.power_series(target))
    assert float(w[0, 1]) > 0.8 and float(w[1, 2]) > 0.7
    assert abs(float(w[2, 0])) < 0.05
