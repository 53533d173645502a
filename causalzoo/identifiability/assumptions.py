"""Checks of the assumptions identifiability theorems rest on, for data or a configuration.

Each check returns an :class:`AssumptionCheck`: truthy when the assumption holds, with the
numbers behind the verdict and a sentence saying what they mean.

* :func:`check_sufficient_variability`: the auxiliary variable changes the latent
  distribution in enough independent directions (iVAE, LEAP, TDRL): the differences
  ``lambda(u_l) - lambda(u_0)`` of the natural parameters must have full rank.
  :func:`gaussian_natural_parameters` estimates them from latents and labels.
* :func:`check_injectivity`: the mixing ``x = f(z)`` is injective, judged locally by the
  rank and condition number of its Jacobian at sample points.
* :func:`check_acyclicity`: a graph is a DAG (and if not, which cycle breaks it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import CausalZooError

__all__ = [
    "AssumptionCheck",
    "gaussian_natural_parameters",
    "check_sufficient_variability",
    "check_injectivity",
    "check_acyclicity",
]


@dataclass(frozen=True)
class AssumptionCheck:
    """Outcome of an assumption check.

    Attributes
    ----------
    name : str
        The assumption.
    passed : bool
    details : dict
        The numbers behind the verdict.
    message : str
        What was found, in words.
    """

    name: str
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def __bool__(self) -> bool:
        return self.passed


def gaussian_natural_parameters(
    z: object, u: object, *, statistics: str = "mean_variance"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-value natural parameters of a factorised Gaussian ``p(z | u)``, estimated.

    For each distinct value of ``u`` (a label, or a row of a design matrix) the mean
    ``mu_i`` and variance ``s_i^2`` of every latent give the natural parameters
    ``(mu_i / s_i^2, -1 / (2 s_i^2))``.

    Parameters
    ----------
    z : array_like, shape (n, d)
        Latents (true ones to check a generator, estimated ones to check a fit).
        Sequences ``(n_units, n_steps, d)`` are flattened.
    u : array_like, shape (n,) or (n, k)
        Auxiliary variable; with sequences, ``(n_units,)`` labels are repeated over steps.
    statistics : {"mean_variance", "variance"}
        ``"variance"`` keeps only ``-1 / (2 s_i^2)`` (variance-modulated sources, iVAE's
        generator): ``d`` parameters per value instead of ``2d``.

    Returns
    -------
    values : numpy.ndarray
        The distinct values of ``u``, in order of first appearance.
    params : numpy.ndarray, shape (n_values, 2d) or (n_values, d)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> u = np.repeat(np.arange(3), 100)
    >>> z = rng.normal(size=(300, 2)) * np.array([1.0, 2.0, 3.0])[u, None]
    >>> gaussian_natural_parameters(z, u, statistics="variance")[1].shape
    (3, 2)
    """
    za = np.asarray(z, dtype=np.float64)
    ua = np.asarray(u)
    if za.ndim == 3:  # sequences: per-unit labels repeat over steps, per-step ones flatten
        if ua.ndim == 1 and ua.shape[0] == za.shape[0]:
            ua = np.repeat(ua, za.shape[1])
        elif ua.shape[:2] == za.shape[:2]:
            ua = ua.reshape(za.shape[0] * za.shape[1], *ua.shape[2:])
        za = za.reshape(-1, za.shape[-1])
    if za.ndim != 2:
        raise CausalZooError(f"z must be (n, d) or (n_units, n_steps, d), got {za.shape}.")
    if ua.shape[0] != za.shape[0]:
        raise CausalZooError(
            f"u has {ua.shape[0]} rows but z has {za.shape[0]} samples; give one auxiliary "
            "value per sample (or per unit for sequences)."
        )
    if statistics not in ("mean_variance", "variance"):
        raise CausalZooError(
            f"statistics={statistics!r} is unknown; use 'mean_variance' or 'variance'."
        )
    keys = ua.reshape(ua.shape[0], -1)
    values, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rows = []
    for k in order:
        zk = za[inverse.reshape(-1) == k]
        if zk.shape[0] < 2:
            raise CausalZooError(
                f"auxiliary value {values[k].tolist()} has {zk.shape[0]} sample; every value "
                "needs at least 2 to estimate a variance."
            )
        var = np.maximum(zk.var(axis=0, ddof=1), 1e-12)
        prec = -0.5 / var
        rows.append(prec if statistics == "variance" else np.r_[zk.mean(axis=0) / var, prec])
    out_values = values[order]
    return (out_values.reshape(-1) if ua.ndim == 1 else out_values), np.asarray(rows)


def check_sufficient_variability(
    natural_params: object, *, rtol: float = 1e-3
) -> AssumptionCheck:
    """Do the auxiliary values move the natural parameters in every direction?

    Identifiability of exponential-family latent models (iVAE, Khemakhem et al. 2020,
    and the temporal LEAP/TDRL theorems) needs ``n_params + 1`` auxiliary values with
    ``[lambda(u_1) - lambda(u_0), ..., lambda(u_L) - lambda(u_0)]`` of full rank
    ``n_params``. The numerical rank counts singular values above ``rtol`` times the
    largest one; the smallest relative singular value says how close to failing it is.

    Parameters
    ----------
    natural_params : array_like, shape (n_values, n_params)
        ``lambda(u_l)`` for each auxiliary value (e.g. from
        :func:`gaussian_natural_parameters`, or a configuration's own parameters).
    rtol : float
        Relative threshold of the numerical rank (estimated parameters are noisy:
        keep it well above the estimation error).

    Returns
    -------
    AssumptionCheck
        ``details``: ``rank``, ``required``, ``n_values``, ``relative_singular_values``.

    Examples
    --------
    >>> lam = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> bool(check_sufficient_variability(lam))
    True
    >>> bool(check_sufficient_variability(lam[:2]))
    False
    """
    lam = np.asarray(natural_params, dtype=np.float64)
    if lam.ndim != 2 or lam.shape[0] < 1:
        raise CausalZooError(
            f"natural_params must be (n_values, n_params), got shape {lam.shape}."
        )
    if not np.all(np.isfinite(lam)):
        raise CausalZooError("natural_params contains NaN or infinite values.")
    required = lam.shape[1]
    diffs = lam[1:] - lam[0]
    sv = np.linalg.svd(diffs, compute_uv=False) if diffs.size else np.zeros(0)
    rel = sv / sv[0] if sv.size and sv[0] > 0 else np.zeros_like(sv)
    rank = int(np.sum(rel > rtol))
    passed = rank == required
    if passed:
        msg = (f"{lam.shape[0]} auxiliary values span all {required} natural-parameter "
               f"directions (smallest relative singular value {rel[required - 1]:.3g}).")
    else:
        msg = (f"{lam.shape[0]} auxiliary values span {rank} of the {required} "
               f"natural-parameter directions; at least {required + 1} values whose "
               "parameters differ in independent directions are needed (add domains or "
               "segments, or use fewer latents).")
    return AssumptionCheck(
        "sufficient variability", passed,
        {"rank": rank, "required": required, "n_values": int(lam.shape[0]),
         "relative_singular_values": rel},
        msg,
    )


def _numerical_jacobian(f: Callable, z: np.ndarray, eps: float) -> np.ndarray:
    """Central differences, every sample and direction in one batched call: (n, p, d)."""
    n, d = z.shape
    steps = np.eye(d) * eps
    pts = np.concatenate([z[:, None, :] + steps, z[:, None, :] - steps], axis=1)
    out = np.asarray(f(pts.reshape(-1, d)), dtype=np.float64).reshape(n, 2 * d, -1)
    return ((out[:, :d] - out[:, d:]) / (2 * eps)).transpose(0, 2, 1)


def check_injectivity(
    mixing: object,
    z: object | None = None,
    *,
    n_points: int = 200,
    eps: float = 1e-4,
    max_condition: float = 1e4,
    rtol: float = 1e-6,
    seed: int = 0,
) -> AssumptionCheck:
    """Is the mixing ``x = f(z)`` injective? Jacobian rank and conditioning at samples.

    A smooth map is locally injective where its Jacobian ``(p, d)`` has rank ``d`` (which
    needs ``p >= d``); a large condition number means it is close to losing a
    direction, so that noise can hide a latent. This is a local, necessary check: it
    cannot see two distant latents mapped to the same ``x``.

    Parameters
    ----------
    mixing : callable or generator output
        ``f(z)`` mapping ``(n, d)`` latents to ``(n, p)`` observations (numpy in, array
        out; the Jacobian is taken by central differences), or a generator's return value
        with an ``observe`` method and ``z`` (e.g. ``leap_nonstationary(...)``).
    z : array_like, shape (n, d), optional
        Points at which to check; default the generator's ``z`` (sequences flattened).
    n_points : int
        At most this many points (a random subset) are checked.
    eps : float
        Finite-difference step.
    max_condition : float
        Largest acceptable condition number of the Jacobian.
    rtol : float
        Singular values below ``rtol`` times the largest count as zero (rank).
    seed : int
        Seed of the subset.

    Returns
    -------
    AssumptionCheck
        ``details``: ``min_rank``, ``n_latent``, ``n_observed``, ``max_condition``,
        ``median_condition``, ``n_points``.

    Examples
    --------
    >>> z = np.random.default_rng(0).normal(size=(50, 2))
    >>> bool(check_injectivity(lambda a: np.c_[a, a[:, :1] ** 3], z))
    True
    >>> bool(check_injectivity(lambda a: a[:, :1] + a[:, 1:], z))
    False
    """
    if callable(mixing):
        f = mixing
    elif hasattr(mixing, "observe") and hasattr(mixing, "z"):
        f = mixing.observe
        z = mixing.z if z is None else z
    else:
        raise CausalZooError(
            f"mixing must be a callable f(z) or a generator output with .observe and .z, "
            f"got {type(mixing).__name__}."
        )
    if z is None:
        raise CausalZooError("pass z, the latent points at which to check the mixing.")
    za = np.asarray(z, dtype=np.float64)
    za = za.reshape(-1, za.shape[-1]) if za.ndim > 2 else za
    if za.ndim != 2:
        raise CausalZooError(f"z must be (n, d) latent points, got shape {za.shape}.")
    rng = np.random.default_rng(seed)
    if za.shape[0] > n_points:
        za = za[rng.choice(za.shape[0], size=n_points, replace=False)]
    jac = _numerical_jacobian(f, za, eps)
    sv = np.linalg.svd(jac, compute_uv=False)  # (n, min(p, d))
    d, p = za.shape[1], jac.shape[1]
    ranks = np.sum(sv > rtol * sv[:, :1], axis=1)
    cond = np.where(sv[:, -1] > 0, sv[:, 0] / np.maximum(sv[:, -1], 1e-300), np.inf)
    if p < d:
        cond = np.full(za.shape[0], np.inf)
    min_rank = int(ranks.min())
    passed = min_rank == d and float(cond.max()) <= max_condition
    if passed:
        msg = (f"the Jacobian has full rank {d} at all {za.shape[0]} points (condition "
               f"number at most {cond.max():.3g}).")
    elif p < d:
        msg = (f"the mixing maps {d} latents to {p} observations: it cannot be injective "
               "pointwise (a model must use temporal context, as CaRiNG does).")
    else:
        msg = (f"the Jacobian rank drops to {min_rank} of {d} or its condition number "
               f"reaches {cond.max():.3g} (> {max_condition:g}): the mixing is (close to) "
               "non-injective there.")
    return AssumptionCheck(
        "injectivity", passed,
        {"min_rank": min_rank, "n_latent": d, "n_observed": p,
         "max_condition": float(cond.max()), "median_condition": float(np.median(cond)),
         "n_points": int(za.shape[0])},
        msg,
    )


def _find_cycle(adj: np.ndarray) -> list[int] | None:
    """A directed cycle as a node list (first node repeated at the end), or None."""
    d = adj.shape[0]
    state = np.zeros(d, dtype=np.int8)  # 0 new, 1 on the stack, 2 done
    for root in range(d):
        if state[root]:
            continue
        stack = [(root, iter(np.flatnonzero(adj[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state[child] == 1:
                return [int(v) for v in path[path.index(child):]] + [int(child)]
            elif state[child] == 0:
                state[child] = 1
                stack.append((child, iter(np.flatnonzero(adj[child]))))
                path.append(int(child))
    return None


def check_acyclicity(graph: object, *, threshold: float = 0.0) -> AssumptionCheck:
    """Is the graph a DAG? ``graph[i, j] != 0`` is an edge ``i -> j``.

    Parameters
    ----------
    graph : array_like, shape (d, d)
        Adjacency or weight matrix (an instantaneous graph; lag graphs are acyclic by
        construction).
    threshold : float
        Entries with absolute value above it are edges.

    Returns
    -------
    AssumptionCheck
        ``details``: ``cycle`` (a list of nodes ``[a, b, ..., a]``, or None) and
        ``n_edges``.

    Examples
    --------
    >>> check_acyclicity(np.array([[0, 1], [1, 0]])).details["cycle"]
    [0, 1, 0]
    """
    g = np.asarray(graph)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise CausalZooError(f"graph must be a square (d, d) matrix, got shape {g.shape}.")
    adj = np.abs(g.astype(np.float64)) > threshold
    cycle = _find_cycle(adj)
    msg = ("the graph is acyclic." if cycle is None else
           "the graph has the cycle " + " -> ".join(map(str, cycle)) + ".")
    return AssumptionCheck("acyclicity", cycle is None,
                           {"cycle": cycle, "n_edges": int(adj.sum())}, msg)
