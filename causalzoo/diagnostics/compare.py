"""Model comparison across zoo entries and configurations on held-out cells.

Per-cell latents are not parameters one can leave out: LOO on the conditional likelihood
``log p(x_n | z_n, globals)`` re-uses ``x_n`` through its own encoder. The comparison here
integrates them out: :func:`~causalzoo.diagnostics.to_datatree` with
``log_likelihood="marginal"`` stores ``log p(x_n | globals_s)`` per draw ``s`` and cell
``n``, estimated by importance sampling from the amortised guide, for cells the models were
not fitted on; ``az.loo`` and ``az.compare`` then read those DataTrees unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from .._errors import CausalZooError
from .convert import to_datatree

__all__ = ["heldout_datatrees", "heldout_lpd", "compare_models"]


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
    if num_samples < 25:
        raise CausalZooError(
            f"num_samples={num_samples}: PSIS-LOO needs at least 25 draws of the globals."
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


def heldout_lpd(dt, var_name: str = "x") -> dict[str, float]:
    """Log pointwise predictive density of held-out cells,
    ``sum_n log mean_s p(x_n | globals_s)``, with its standard error over cells."""
    ll = dt["log_likelihood"].to_dataset()[var_name]
    values = ll.stack(sample=("chain", "draw")).transpose(..., "sample").values
    per_cell = logsumexp(values, axis=-1) - np.log(values.shape[-1])
    per_cell = per_cell.reshape(-1)
    return {
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
        ``az.compare``'s table (``rank``, ``elpd``, ``elpd_diff``, ``weight``, …) plus the
        held-out ``lpd``, its ``lpd_se`` and ``lpd_per_cell``.
    """
    import arviz as az

    trees = heldout_datatrees(models, adata, num_samples=num_samples, n_inner=n_inner, seed=seed)
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", UserWarning)
        table = az.compare(trees, method=method)
    lpd = {name: heldout_lpd(dt) for name, dt in trees.items()}
    table["lpd"] = [lpd[n]["lpd"] for n in table.index]
    table["lpd_se"] = [lpd[n]["se"] for n in table.index]
    table["lpd_per_cell"] = [lpd[n]["lpd_per_cell"] for n in table.index]
    return table
