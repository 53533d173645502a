r"""Acyclicity constraints for learned graphs (the analytic-function family).

A weighted adjacency matrix ``W`` (``W[i, j] != 0``: an edge ``i -> j``) is a DAG exactly
when ``B = W ∘ W`` (elementwise square, non-negative) has no closed walk, i.e. when
``tr(B^k) = 0`` for every ``k = 1 .. d``. Every constraint here has the form

    h(W) = tr f(B) - f(0) d,    f(x) = c_0 + sum_k c_k x^k,  c_k > 0,

so ``h(W) >= 0``, with equality if and only if ``W`` is a DAG (a self-loop ``W[i, i] != 0``
is a cycle of length 1). Because ``h`` is a smooth function of ``W`` its gradient
``∇h(W) = 2 W ∘ f'(B)^T`` is what ``jax.grad`` returns; it vanishes on every DAG and not on a
graph with a cycle whose edges are non-zero.

============================  ======================================  ==========================
constraint                    ``h(W)``                                cost (``d x d`` products)
============================  ======================================  ==========================
:func:`exponential`           ``tr e^B - d`` (NOTEARS)                one ``expm``
:func:`binomial`              ``tr (I + B/d)^d - d``                  ``O(log d)``
:func:`power_series`          ``tr sum_{k=1}^{K} B^k``                ``O(log K)`` (doubling)
:func:`log_det`               ``-log det(sI - B) + d log s`` (DAGMA)  one ``slogdet``
============================  ======================================  ==========================

:func:`log_det` is only defined while the spectral radius of ``B`` stays below ``s``
(where ``sI - B`` is an M-matrix); outside that region it returns ``inf``. The polynomial
constraints (:func:`binomial`, :func:`power_series` with ``K >= d``) are exactly 0 on a
DAG even in float32, because every closed walk of a DAG contains an exact zero factor.

:func:`dag_penalty` turns any of them into the augmented-Lagrangian term
``alpha * h + rho / 2 * h^2``, and :func:`dag_factor` adds its negative to a NumPyro model
as a ``numpyro.factor`` on a latent graph.

References: Zheng et al. 2018 (NOTEARS); Yu et al. 2019 (DAG-GNN, the binomial form);
Zhang et al. 2022 (truncated matrix power iteration); Bello et al. 2022 (DAGMA); Zhang et
al. 2025, "Analytic DAG constraints" (the family).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpyro

from .._errors import CausalZooError, check_int

__all__ = [
    "exponential",
    "binomial",
    "power_series",
    "log_det",
    "acyclicity",
    "dag_penalty",
    "dag_factor",
    "CONSTRAINTS",
]


def _square_weights(w: jax.Array) -> jax.Array:
    w = jnp.asarray(w)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise CausalZooError(
            f"a graph must be a square (d, d) weight matrix, got shape {w.shape}; pass the "
            "weighted adjacency matrix with W[i, j] the weight of the edge i -> j."
        )
    if not jnp.issubdtype(w.dtype, jnp.floating):
        w = w.astype(jnp.result_type(float))
    return w * w


def _matrix_power(b: jax.Array, k: int) -> jax.Array:
    """``b^k`` (``k >= 1``) by repeated squaring: ``O(log k)`` matrix products."""
    result = None
    base = b
    while True:
        if k & 1:
            result = base if result is None else result @ base
        k >>= 1
        if not k:
            return result
        base = base @ base


def exponential(w: jax.Array) -> jax.Array:
    """NOTEARS constraint ``tr(e^{W∘W}) - d``.

    Parameters
    ----------
    w : jax.Array, shape (d, d)
        Weighted adjacency matrix.

    Returns
    -------
    jax.Array
        Scalar, 0 on a DAG (up to the rounding of ``expm``) and > 0 with a cycle.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(exponential(jnp.array([[0.0, 1.0], [0.0, 0.0]]))) == 0.0
    True
    """
    b = _square_weights(w)
    return jnp.trace(jax.scipy.linalg.expm(b)) - b.shape[0]


def binomial(w: jax.Array) -> jax.Array:
    """Binomial (DAG-GNN) constraint ``tr((I + W∘W / d)^d) - d``.

    Computed with ``O(log d)`` matrix products; exactly 0 on a DAG.

    Parameters
    ----------
    w : jax.Array, shape (d, d)

    Returns
    -------
    jax.Array
        Scalar ``h(W) >= 0``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> round(float(binomial(jnp.array([[0.0, 1.0], [1.0, 0.0]]))), 4)
    0.5
    """
    b = _square_weights(w)
    d = b.shape[0]
    return jnp.trace(_matrix_power(jnp.eye(d, dtype=b.dtype) + b / d, d)) - d


def power_series(w: jax.Array, order: int | None = None) -> jax.Array:
    """Truncated power series ``tr(sum_{k=1}^{K} (W∘W)^k)``, in ``O(log K)`` products.

    The partial sums are built by doubling, ``S_{2m} = S_m + B^m S_m`` and
    ``S_{m+1} = B (I + S_m)``, as in truncated matrix power iteration. With ``K >= d``
    (the default ``K = d``) every cycle is counted, so ``h = 0`` exactly on a DAG and
    ``h > 0`` on any graph with a cycle.

    Parameters
    ----------
    w : jax.Array, shape (d, d)
    order : int, optional
        ``K``, the highest power (default ``d``). ``K < d`` misses cycles longer than ``K``.

    Returns
    -------
    jax.Array
        Scalar ``h(W) >= 0``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> cycle = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    >>> float(power_series(cycle)), float(power_series(cycle, order=2))
    (3.0, 0.0)
    """
    b = _square_weights(w)
    d = b.shape[0]
    k = d if order is None else order
    k = check_int("order", k, meaning=f"default: d = {d}")
    eye = jnp.eye(d, dtype=b.dtype)
    # Walk the binary digits of K from the most significant: (S_m, B^m) -> (S_2m, B^2m),
    # then -> (S_{2m+1}, B^{2m+1}) when the digit is 1.
    s, p = b, b
    for bit in bin(int(k))[3:]:
        s = s + p @ s
        p = p @ p
        if bit == "1":
            s = b @ (eye + s)
            p = p @ b
    return jnp.trace(s)


def log_det(w: jax.Array, s: float = 1.0) -> jax.Array:
    """DAGMA log-determinant constraint ``-log det(sI - W∘W) + d log s``.

    Defined where ``sI - W∘W`` is an M-matrix (spectral radius of ``W∘W`` below ``s``);
    there it is ``>= 0`` with equality exactly on DAGs. Outside that region it returns
    ``inf`` (rescale ``W`` or raise ``s``).

    Parameters
    ----------
    w : jax.Array, shape (d, d)
    s : float
        The log-det scale (> 0).

    Returns
    -------
    jax.Array
        Scalar ``h(W)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> round(float(log_det(jnp.array([[0.0, 0.5], [0.5, 0.0]]))), 4)
    0.0645
    """
    if isinstance(s, (int, float)) and not s > 0:  # a traced s is the caller's business
        raise CausalZooError(f"s={s!r} must be > 0 (the log-det scale, DAGMA uses 1).")
    b = _square_weights(w)
    d = b.shape[0]
    sign, logabsdet = jnp.linalg.slogdet(s * jnp.eye(d, dtype=b.dtype) - b)
    h = -logabsdet + d * jnp.log(jnp.asarray(s, dtype=b.dtype))
    return jnp.where(sign > 0, h, jnp.inf)


CONSTRAINTS: dict[str, Callable[..., jax.Array]] = {
    "exponential": exponential,
    "binomial": binomial,
    "power_series": power_series,
    "log_det": log_det,
}


def acyclicity(w: jax.Array, method: str = "power_series", **kwargs) -> jax.Array:
    """Evaluate the acyclicity constraint named ``method``.

    Parameters
    ----------
    w : jax.Array, shape (d, d)
    method : {"exponential", "binomial", "power_series", "log_det"}
    **kwargs
        Passed to the constraint (``order`` for ``power_series``, ``s`` for ``log_det``).

    Returns
    -------
    jax.Array
        Scalar ``h(W)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(acyclicity(jnp.zeros((3, 3)), method="binomial"))
    0.0
    """
    try:
        fn = CONSTRAINTS[method]
    except (KeyError, TypeError):
        raise CausalZooError(
            f"method={method!r} is not an acyclicity constraint; use one of "
            f"{sorted(CONSTRAINTS)}."
        ) from None
    return fn(w, **kwargs)


def dag_penalty(
    w: jax.Array,
    method: str = "power_series",
    alpha: float = 0.0,
    rho: float = 1.0,
    **kwargs,
) -> jax.Array:
    """Augmented-Lagrangian penalty ``alpha * h(W) + rho / 2 * h(W)^2``.

    Parameters
    ----------
    w : jax.Array, shape (d, d)
    method : str
        See :func:`acyclicity`.
    alpha : float
        Lagrange multiplier (>= 0).
    rho : float
        Quadratic penalty weight (>= 0).
    **kwargs
        Passed to the constraint.

    Returns
    -------
    jax.Array
        Scalar penalty, 0 on a DAG.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(dag_penalty(jnp.array([[0.0, 1.0], [1.0, 0.0]]), alpha=1.0, rho=2.0))
    6.0
    """
    if not (alpha >= 0 and rho >= 0):
        raise CausalZooError(
            f"alpha={alpha!r} and rho={rho!r} must both be >= 0 (a penalty, not a reward)."
        )
    h = acyclicity(w, method, **kwargs)
    return alpha * h + 0.5 * rho * h * h


def dag_factor(
    name: str,
    w: jax.Array,
    method: str = "power_series",
    alpha: float = 0.0,
    rho: float = 1.0,
    **kwargs,
) -> jax.Array:
    """Add ``-dag_penalty(W)`` to a NumPyro model's log density as ``numpyro.factor``.

    Use inside a model after sampling (or ``numpyro.param``-ing) a latent graph ``W``;
    under SVI the ELBO then pushes ``W`` towards a DAG. Outside a handler context the
    factor is a no-op, as for any NumPyro site.

    Parameters
    ----------
    name : str
        Site name of the factor.
    w : jax.Array, shape (d, d)
    method : str
        See :func:`acyclicity`.
    alpha, rho : float
        See :func:`dag_penalty`.
    **kwargs
        Passed to the constraint.

    Returns
    -------
    jax.Array
        The penalty that was subtracted.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro.infer.util import log_density
    >>> def model():
    ...     dag_factor("dag", jnp.array([[0.0, 1.0], [1.0, 0.0]]), rho=2.0)
    >>> float(log_density(model, (), {}, {})[0])
    -4.0
    """
    penalty = dag_penalty(w, method, alpha, rho, **kwargs)
    numpyro.factor(name, -penalty)
    return penalty
