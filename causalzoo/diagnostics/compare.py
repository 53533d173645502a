"""Model comparison across zoo entries and configurations on held-out cells, and the
comparison of an SVI posterior with a NUTS reference (:func:`compare_posteriors`).

Per-cell latents are not parameters one can leave out: LOO on the conditional likelihood
``log p(x_n | z_n, globals)`` re-uses ``x_n`` through its own encoder. The comparison here
integrates them out: :func:`~causalzoo.diagnostics.to_datatree` with
``log_likelihood="marginal"`` stores ``log p(x_n | globals_s)`` per draw ``s`` and cell
``n``, estimated by importance sampling from the amortised guide, for cells the models were
not fitted on; ``az.loo`` and ``az.compare`` then read those DataTrees unchanged.

On cells no model was fitted to, the held-out measure is the log pointwise predictive
density ``lpd = sum_n log mean_s p(x_n | globals_s)`` (:func:`heldout_lpd`): the posterior
never saw the cells, so there is nothing to leave out. ``az.compare``'s ``elpd`` on such
cells still applies the leave-one-out correction (``elpd = lpd - p_loo``, a penalty for cells
the posterior was conditioned on) and runs below the ``lpd``; :func:`compare_models`
reports both, with paired differences of the ``lpd`` and their standard errors.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import logsumexp

from .._errors import CausalZooError
from .convert import to_datatree
from .variational import _MIN_DRAWS

__all__ = ["heldout_datatrees", "heldout_lpd", "compare_models", "compare_posteriors"]


def heldout_datatrees(
    models: Mapping[str, Any],
    adata,
    *,
    num_samples: int = 100,
    n_inner: int = 16,
    seed: int = 0,
) -> dict:
    """One DataTree per fitted model, on the same held-out cells, with the marginal
    per-cell log-likelihood (``log_likelihood="marginal"``) and no predictive draws."""
    if not models:
        raise CausalZooError("models is empty: pass {name: fitted_model, ...}.")
    if num_samples < _MIN_DRAWS:
        raise CausalZooError(
            f"num_samples={num_samples}: PSIS-LOO needs at least {_MIN_DRAWS} draws of the "
            "globals (with fewer, ArviZ's Pareto-k is NaN)."
        )
    return {
        name: to_datatree(
            model,
            adata,
            num_samples=num_samples,
            seed=seed,
            posterior_predictive=False,
            log_likelihood="marginal",
            n_inner=n_inner,
            include_local=False,
        )
        for name, model in models.items()
    }


def heldout_lpd(dt, var_name: str = "x", *, pointwise: bool = False) -> dict[str, Any]:
    """Log pointwise predictive density of held-out cells,
    ``sum_n log mean_s p(x_n | globals_s)``, with its standard error over cells
    (``pointwise=True`` adds ``lpd_cells``, the per-cell terms, for paired differences)."""
    ll = dt["log_likelihood"].to_dataset()[var_name]
    values = ll.stack(sample=("chain", "draw")).transpose(..., "sample").values
    per_cell = logsumexp(values, axis=-1) - np.log(values.shape[-1])
    per_cell = per_cell.reshape(-1)
    extra = {"lpd_cells": per_cell} if pointwise else {}
    return {**extra,
        "lpd": float(per_cell.sum()),
        "se": float(np.sqrt(per_cell.size * per_cell.var(ddof=1))) if per_cell.size > 1 else np.nan,
        "lpd_per_cell": float(per_cell.mean()),
        "n_cells": int(per_cell.size),
    }


def compare_models(
    models: Mapping[str, Any],
    adata,
    *,
    num_samples: int = 100,
    n_inner: int = 16,
    seed: int = 0,
    method: str = "stacking",
    quiet: bool = True,
) -> pd.DataFrame:
    """Rank fitted models by PSIS-LOO of their marginal likelihood on held-out cells.

    Parameters
    ----------
    models : mapping
        Name to fitted model (any class :func:`~causalzoo.diagnostics.to_datatree`
        converts); all set up on the same genes.
    adata : anndata.AnnData
        Held-out cells, set up like the training data.
    num_samples, n_inner, seed
        Draws of the globals, inner importance samples per cell, seed.
    method : str
        ``az.compare``'s weighting method.
    quiet : bool
        Silence ArviZ's Pareto-k warnings (the ``pareto_k`` column of ``az.loo`` and the
        ``lpd`` columns here report them).

    Returns
    -------
    pandas.DataFrame
        ``az.compare``'s table (``rank``, ``elpd``, ``elpd_diff``, ``weight``, …, unrounded)
        plus the held-out ``lpd``, its ``lpd_se`` and ``lpd_per_cell``, and ``lpd_diff`` /
        ``lpd_diff_se``: the paired difference of the per-cell ``lpd`` from the model with
        the highest ``lpd``, and its standard error over cells (the held-out comparison; see
        the module docstring for why ``elpd`` runs below ``lpd`` here).
    """
    import arviz as az

    trees = heldout_datatrees(models, adata, num_samples=num_samples, n_inner=n_inner, seed=seed)
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", UserWarning)
        # unrounded: ArviZ rounds elpd to its standard error by default
        table = az.compare(trees, method=method, round_to="none")
    lpd = {name: heldout_lpd(dt, pointwise=True) for name, dt in trees.items()}
    table["lpd"] = [lpd[n]["lpd"] for n in table.index]
    table["lpd_se"] = [lpd[n]["se"] for n in table.index]
    table["lpd_per_cell"] = [lpd[n]["lpd_per_cell"] for n in table.index]
    best = max(lpd, key=lambda n: lpd[n]["lpd"])
    diff = {n: lpd[n]["lpd_cells"] - lpd[best]["lpd_cells"] for n in lpd}
    table["lpd_diff"] = [float(diff[n].sum()) for n in table.index]
    table["lpd_diff_se"] = [
        float(np.sqrt(diff[n].size * diff[n].var(ddof=1))) if diff[n].size > 1 else np.nan
        for n in table.index
    ]
    return table


def _shape(var) -> tuple[int, ...]:
    return tuple(n for d, n in var.sizes.items() if d not in ("chain", "draw"))


def _posterior(tree) -> xr.Dataset:
    if isinstance(tree, xr.DataTree):
        if "posterior" not in tree.children:
            raise CausalZooError("The DataTree has no 'posterior' group to compare.")
        return tree["posterior"].to_dataset()
    if isinstance(tree, xr.Dataset):
        return tree
    raise CausalZooError(
        f"compare_posteriors takes DataTrees (or posterior Datasets); got {type(tree).__name__}."
    )


def compare_posteriors(
    approx,
    reference,
    *,
    var_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per-parameter comparison of an approximate posterior (SVI) with a reference (NUTS).

    Parameters
    ----------
    approx, reference : xarray.DataTree or xarray.Dataset
        DataTrees with a ``posterior`` group of ``(chain, draw, ...)`` variables, e.g.
        ``to_datatree(model)`` and ``model.nuts_result.to_datatree()``.
    var_names : sequence of str, optional
        Variables to compare (default: those in both posteriors with the same non-sample
        dims and sizes).

    Returns
    -------
    pandas.DataFrame
        One row per scalar parameter (``effect[P0, z_resp_1]``, …) with columns
        ``mean_approx``, ``mean_reference``, ``sd_approx``, ``sd_reference``,
        ``mean_diff_sd`` ``= (mean_approx - mean_reference) / sd_reference`` (the location
        error in reference posterior sds) and ``sd_ratio`` ``= sd_approx / sd_reference``
        (below 1: the approximation is under-dispersed, the usual failure of mean-field VI
        on correlated posteriors). Parameters with a reference sd of zero (held fixed) are
        left out. Variables are matched by name and their dims by position (labels come
        from the reference).

    Examples
    --------
    >>> table = compare_posteriors(svi_tree, nuts_tree, var_names=["effect"])  # doctest: +SKIP
    >>> table["sd_ratio"].median()  # doctest: +SKIP
    """
    a, r = _posterior(approx), _posterior(reference)
    sample = ("chain", "draw")
    if var_names is None:
        var_names = [v for v in r.data_vars if v in a.data_vars and _shape(a[v]) == _shape(r[v])]
    if not var_names:
        raise CausalZooError(
            f"No variable to compare: approx has {sorted(a.data_vars)}, reference has "
            f"{sorted(r.data_vars)}; pass var_names present in both with the same dims."
        )
    rows = []
    for name in var_names:
        if name not in a.data_vars or name not in r.data_vars:
            raise CausalZooError(
                f"{name!r} is not in both posteriors (approx: {sorted(a.data_vars)}; "
                f"reference: {sorted(r.data_vars)})."
            )
        va, vr = a[name], r[name]
        if _shape(va) != _shape(vr):
            raise CausalZooError(
                f"{name!r} has shape {_shape(va)} in approx and {_shape(vr)} in reference "
                "(besides chain and draw)."
            )
        # matched by position: the two converters may name the same dims differently
        dims = [d for d in vr.dims if d not in sample]
        flat = {}
        for tag, v in (("approx", va), ("reference", vr)):
            values = v.transpose("chain", "draw", ...).values.astype(np.float64)
            values = values.reshape(-1, *values.shape[2:])
            flat[f"mean_{tag}"] = values.mean(0).reshape(-1)
            flat[f"sd_{tag}"] = values.std(0).reshape(-1)
        def label(idx, dims=dims, vr=vr, name=name):
            parts = [str(vr[d].values[i]) if d in vr.coords else str(i)
                     for d, i in zip(dims, idx, strict=True)]
            return f"{name}[{', '.join(parts)}]" if parts else name

        labels = [label(idx) for idx in np.ndindex(*[vr.sizes[d] for d in dims])]
        for j, label in enumerate(labels):
            rows.append({"parameter": label, **{k: v[j] for k, v in flat.items()}})
    table = pd.DataFrame(rows).set_index("parameter")
    table = table[table["sd_reference"] > 0]
    table["mean_diff_sd"] = (table["mean_approx"] - table["mean_reference"]) / table["sd_reference"]
    table["sd_ratio"] = table["sd_approx"] / table["sd_reference"]
    return table
