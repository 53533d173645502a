"""Diagnostics for variational posteriors, where R-hat and ESS do not apply.

Variational draws are independent by construction, so chain-mixing diagnostics say nothing;
what can go wrong is that ``q`` misses mass of ``p``, or that the optimisation has not
converged. Three checks, all reading a :func:`~causalzoo.diagnostics.to_datatree` result:

* :func:`importance_diagnostics`: the PSIS Pareto-``k`` of the importance weights
  ``log p(x, z) - log q(z | x)`` (Yao et al., 2018), per cell and for the joint; ``k > 0.7``
  means importance-weighted estimates (and the guide) cannot be trusted;
* :func:`elbo_convergence`: whether the ELBO history has flattened;
* :func:`count_ppc`: posterior predictive checks for counts: per-gene mean, variance and
  zero fraction, and per-cell library size, observed against replicated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .._errors import CausalZooError

__all__ = [
    "pareto_k",
    "pareto_k_threshold",
    "importance_diagnostics",
    "elbo_convergence",
    "count_ppc",
]


# Fewest draws for which PSIS gives a finite k (arviz-stats 1.x: a tail of floor(S / 5) >= 6).
_MIN_DRAWS = 30


def pareto_k(log_weights, axis: int = -1) -> np.ndarray:
    """Pareto-smoothed importance sampling shape ``k`` of log importance weights.

    Parameters
    ----------
    log_weights : array
        ``log p(x, z_s) - log q(z_s)`` for independent draws ``z_s ~ q``, along ``axis``.
    axis : int
        The draws axis.

    Returns
    -------
    numpy.ndarray
        ``k`` for every other index. ``k < 0.5``: the weights have finite variance;
        ``k > 0.7``: importance sampling from ``q`` is unreliable; ``-inf``: all weights
        equal (``q`` is the target).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=4000)                      # q = p = N(0, 1): equal weights
    >>> float(pareto_k(np.zeros(4000) + 1e-3 * z)) < 0.5
    True
    """
    from arviz_stats.base import array_stats

    lw = np.moveaxis(np.asarray(log_weights, dtype=np.float64), axis, -1)
    if lw.shape[-1] < _MIN_DRAWS:
        # the generalised Pareto fit uses the largest floor(S / 5) weights; ArviZ's fit
        # needs 6 of them (with 5 its first tail quartile is the minimum and k is NaN)
        raise CausalZooError(
            f"Pareto-k needs at least {_MIN_DRAWS} draws; got {lw.shape[-1]}. Draw more "
            "(to_datatree(..., num_samples=...))."
        )
    if not np.all(np.isfinite(lw)):
        raise CausalZooError("log_weights contain NaN or infinite values.")
    # psislw smooths the weights 1 / exp(ary) (its input is a log-likelihood): pass -log w.
    _, k = array_stats.psislw(-lw, r_eff=1.0, axis=-1)
    k = np.asarray(k, dtype=np.float64)
    # Equal weights (q is the target, up to float noise) have no tail to fit: k = -inf.
    spread = np.ptp(lw, axis=-1)
    constant = spread <= 1e-5 * np.maximum(1.0, np.abs(lw).max(axis=-1))
    return np.where(constant, -np.inf, k)


def pareto_k_threshold(n_draws: int) -> float:
    """The sample-size dependent threshold ``min(1 - 1 / log10(S), 0.7)`` of Vehtari et al.
    (2024): above it, ``S`` draws are too few for a reliable PSIS estimate."""
    return float(min(1.0 - 1.0 / np.log10(n_draws), 0.7))


def _group(dt, name):
    if name not in dt.children:
        raise CausalZooError(
            f"The DataTree has no {name!r} group; it has {sorted(dt.children)}. Build it with "
            "causalzoo.diagnostics.to_datatree(model)."
        )
    return dt[name].to_dataset()


def importance_diagnostics(dt) -> dict[str, Any]:
    """PSIS Pareto-``k`` of the guide, from ``sample_stats`` of a DataTree.

    Parameters
    ----------
    dt : xarray.DataTree
        From :func:`~causalzoo.diagnostics.to_datatree` (``sample_stats.log_weight``, per
        draw and cell, and ``log_weight_joint``, per draw).

    Returns
    -------
    dict
        ``k_cells`` (``xarray.DataArray`` over cells): ``k`` of each cell's local weights
        ``log p(x_n, z_n | g) - log q(z_n | x_n)``; ``k_joint``: ``k`` of the joint weights
        over all cells and globals (large for any non-trivial model: VI is not importance
        sampling in thousands of dimensions); ``threshold``; ``fraction_bad``: the share of
        cells above the threshold; ``n_draws``.
    """
    stats = _group(dt, "sample_stats")
    if "log_weight" not in stats:
        raise CausalZooError("sample_stats has no 'log_weight': use to_datatree(model).")
    lw = stats["log_weight"].stack(sample=("chain", "draw")).transpose(..., "sample")
    n_draws = lw.sizes["sample"]
    k_cells = xr.DataArray(
        pareto_k(lw.values), dims=[d for d in lw.dims if d != "sample"],
        coords={d: lw.coords[d] for d in lw.dims if d != "sample" and d in lw.coords},
        name="pareto_k",
    )
    joint = stats["log_weight_joint"].values.reshape(-1)
    threshold = pareto_k_threshold(n_draws)
    return {
        "k_cells": k_cells,
        "k_joint": float(pareto_k(joint)),
        "threshold": threshold,
        "fraction_bad": float((k_cells > threshold).mean()),
        "n_draws": int(n_draws),
    }


def elbo_convergence(elbo, *, window: int | None = None, rtol: float = 1e-3) -> dict[str, Any]:
    """Has the ELBO flattened? Compares the means of the last two windows of the history.

    Parameters
    ----------
    elbo : array or xarray.DataTree
        The ELBO per step, or a DataTree with ``sample_stats.elbo``.
    window : int, optional
        Steps per window (default: a tenth of the history, at least 1).
    rtol : float
        Converged when ``|mean(last) - mean(previous)| <= rtol * |mean(last)|``, i.e. the
        relative gain of the last window is under ``rtol``; the gain is also compared with
        the noise (standard error of the window means).

    Returns
    -------
    dict
        ``final`` (mean of the last window), ``relative_change``, ``change_in_se`` (the
        change in units of its standard error), ``slope`` (per step, least squares over the
        last window), ``converged`` and ``n_steps``.
    """
    if isinstance(elbo, xr.DataTree):
        elbo = _group(elbo, "sample_stats").get("elbo")
        if elbo is None:
            raise CausalZooError("sample_stats has no 'elbo' (the model has no loss history).")
    values = np.asarray(elbo, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size < 4:
        raise CausalZooError(
            f"The ELBO history has {values.size} finite steps; at least 4 are needed."
        )
    window = max(1, values.size // 10) if window is None else int(window)
    if not 1 <= window <= values.size // 2:
        raise CausalZooError(
            f"window={window} must lie in [1, {values.size // 2}] for {values.size} steps."
        )
    last, prev = values[-window:], values[-2 * window : -window]
    change = last.mean() - prev.mean()
    se = np.sqrt(last.var(ddof=1) / window + prev.var(ddof=1) / window) if window > 1 else np.nan
    slope = np.polyfit(np.arange(window), last, 1)[0] if window > 1 else np.nan
    relative = abs(change) / max(abs(last.mean()), 1e-12)
    return {
        "final": float(last.mean()),
        "relative_change": float(relative),
        "change_in_se": float(change / se) if se and np.isfinite(se) and se > 0 else np.nan,
        "slope": float(slope),
        "converged": bool(relative <= rtol),
        "n_steps": int(values.size),
    }


def count_ppc(dt, var_name: str = "x") -> xr.Dataset:
    """Posterior predictive checks for counts: observed statistics against replicated ones.

    Parameters
    ----------
    dt : xarray.DataTree
        With ``observed_data`` and ``posterior_predictive`` groups holding ``var_name`` on
        dims ``(cells, genes)``.
    var_name : str
        The observed variable.

    Returns
    -------
    xarray.Dataset
        Per gene: ``mean``, ``variance`` and ``zero_fraction`` of the observed data, the
        replicated ones ``*_rep`` (chain, draw, genes) and the posterior predictive p-values
        ``*_p`` (the share of replicates at or above the observed value; near 0 or 1 flags
        a misfit). Per cell: ``library_size`` and ``library_size_rep``, with
        ``library_size_p``.
    """
    obs = _group(dt, "observed_data")
    rep = _group(dt, "posterior_predictive")
    for ds, group in ((obs, "observed_data"), (rep, "posterior_predictive")):
        if var_name not in ds:
            raise CausalZooError(
                f"{group} has no variable {var_name!r}; it has {list(ds.data_vars)}."
            )
    y, yr = obs[var_name], rep[var_name]
    if y.ndim != 2:
        raise CausalZooError(f"{var_name!r} must be (cells, features); got dims {y.dims}.")
    cells, genes = y.dims
    out = {}
    stats = {
        "mean": lambda a: a.mean(cells),
        "variance": lambda a: a.var(cells),
        "zero_fraction": lambda a: (a == 0).mean(cells),
    }
    for name, fn in stats.items():
        o, r = fn(y), fn(yr)
        out[name], out[f"{name}_rep"] = o, r
        out[f"{name}_p"] = (r >= o).mean(("chain", "draw"))
    lib, lib_rep = y.sum(genes), yr.sum(genes)
    out["library_size"], out["library_size_rep"] = lib, lib_rep
    out["library_size_p"] = (lib_rep >= lib).mean(("chain", "draw"))
    return xr.Dataset(out)

