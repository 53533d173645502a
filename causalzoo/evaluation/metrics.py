"""Perturbation-prediction metrics on mean expression profiles.

The definitions follow the GEARS protocol (``snap-stanford/GEARS``): per perturbation,
on the mean over cells of log-normalised expression, Pearson correlation of the change
from control (all genes and the top-20 DE genes), MSE on the DE genes, and the fraction of
DE genes predicted to move in the wrong direction. DE genes come from scanpy's
``rank_genes_groups`` against control, ranked by absolute score.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from .._errors import CausalZooError, check_int

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = [
    "log_normalize",
    "pearson_delta",
    "mse",
    "top_de_genes",
    "direction_errors",
    "nrmse",
    "r2_means",
    "r2_delta_weighted",
    "de_ranking",
    "score_condition",
]


def log_normalize(counts: object, target_sum: float = 1e4) -> np.ndarray:
    """Library-size normalise and log1p counts with scanpy.

    Parameters
    ----------
    counts : array_like or scipy.sparse matrix, shape (n_cells, n_genes)
        Raw counts (dense or sparse; JAX arrays are accepted).
    target_sum : float
        Total count every cell is scaled to (``scanpy.pp.normalize_total``).

    Returns
    -------
    numpy.ndarray, shape (n_cells, n_genes)
        Dense ``log1p(counts / total * target_sum)``; float32 unless the input is float64.

    Examples
    --------
    >>> log_normalize(np.array([[1.0, 3.0]]), target_sum=4.0).round(3)
    array([[0.693, 1.386]])
    """
    import anndata as ad
    import scanpy as sc

    # The output is dense anyway; densifying first also skips the numba compilation of
    # scanpy's sparse kernels (several seconds on first use).
    x = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    if x.ndim != 2:
        raise CausalZooError(
            f"counts must be 2-D (cells x genes), got shape {x.shape}; reshape it first."
        )
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    x = x.astype(dtype, copy=True)
    if float(target_sum) <= 0:
        raise CausalZooError(f"target_sum={target_sum!r} must be positive (e.g. 1e4).")
    if x.size and (not np.all(np.isfinite(x)) or x.min() < 0):
        raise CausalZooError(
            "counts must be finite and non-negative; pass raw counts, not log-normalised data."
        )
    adata = ad.AnnData(X=x)
    sc.pp.normalize_total(adata, target_sum=float(target_sum))
    sc.pp.log1p(adata)
    return np.asarray(adata.X)


def _vectors(genes: object | None, **arrays: object) -> list[np.ndarray]:
    out = []
    length = None
    for name, a in arrays.items():
        v = np.asarray(a, dtype=np.float64)
        if v.ndim != 1:
            raise CausalZooError(
                f"{name} must be a 1-D mean profile over genes, got shape {v.shape}; "
                "average over cells first (e.g. x.mean(axis=0))."
            )
        if length is not None and v.shape[0] != length:
            raise CausalZooError(
                f"{name} has {v.shape[0]} genes but the other profiles have {length}; "
                "use the same genes in the same order."
            )
        length = v.shape[0]
        out.append(v)
    if genes is not None:
        idx = np.asarray(genes)
        if idx.dtype == bool:
            if idx.shape != (length,):
                raise CausalZooError(
                    f"a boolean genes mask must have {length} entries, got {idx.shape}."
                )
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size == 0 or idx.min() < -length or idx.max() >= length:
            raise CausalZooError(
                f"genes must be a non-empty index into {length} genes; got {idx.tolist()[:10]}."
            )
        out = [v[idx] for v in out]
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def pearson_delta(
    pred_mean: object, obs_mean: object, ctrl_mean: object, genes: object | None = None
) -> float:
    """Pearson correlation of predicted and observed changes from control.

    Parameters
    ----------
    pred_mean, obs_mean, ctrl_mean : array_like, shape (n_genes,)
        Mean (log-normalised) profiles of the prediction, the observed condition and
        control.
    genes : array_like of int or bool, optional
        Restrict to these genes (e.g. the top-20 DE genes).

    Returns
    -------
    float
        ``corr(pred - ctrl, obs - ctrl)``; NaN when either change is constant.

    Examples
    --------
    >>> pearson_delta([1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 0.0])
    1.0
    """
    p, o, c = _vectors(genes, pred_mean=pred_mean, obs_mean=obs_mean, ctrl_mean=ctrl_mean)
    return _pearson(p - c, o - c)


def mse(pred_mean: object, obs_mean: object, genes: object | None = None) -> float:
    """Mean squared error between two mean profiles, optionally on a gene subset.

    Examples
    --------
    >>> mse([1.0, 2.0], [1.0, 4.0])
    2.0
    """
    p, o = _vectors(genes, pred_mean=pred_mean, obs_mean=obs_mean)
    return float(np.mean((p - o) ** 2))


def direction_errors(
    pred_mean: object, obs_mean: object, ctrl_mean: object, genes: object
) -> float:
    """Fraction of genes whose predicted change from control has the wrong sign.

    As in GEARS: ``mean(sign(pred - ctrl) != sign(obs - ctrl))`` over ``genes``; a zero
    change only matches a zero change.

    Examples
    --------
    >>> direction_errors([1.0, -1.0], [2.0, 1.0], [0.0, 0.0], genes=[0, 1])
    0.5
    """
    p, o, c = _vectors(genes, pred_mean=pred_mean, obs_mean=obs_mean, ctrl_mean=ctrl_mean)
    return float(np.mean(np.sign(p - c) != np.sign(o - c)))


def nrmse(pred_mean: object, obs_mean: object, genes: object | None = None) -> float:
    """Normalised root mean squared error of mean profiles (Discrepancy-VAE's definition).

    ``sqrt(mean((pred - obs)^2) / mean(obs^2))``: 0 is perfect, 1 is as far off as
    predicting zeros.

    Examples
    --------
    >>> nrmse([2.0, 1.0], [2.0, 0.0])  # sqrt((0 + 1) / 2 / ((4 + 0) / 2))
    0.5
    >>> nrmse([0.0, 0.0], [2.0, 0.0])
    1.0
    """
    p, o = _vectors(genes, pred_mean=pred_mean, obs_mean=obs_mean)
    denom = float(np.mean(o * o))
    return float(np.sqrt(np.mean((p - o) ** 2) / denom)) if denom > 0 else float("nan")


def r2_means(pred_mean: object, obs_mean: object, genes: object | None = None) -> float:
    """Coefficient of determination of the observed mean profile by the predicted one.

    ``1 - sum((obs - pred)^2) / sum((obs - mean(obs))^2)`` over genes, not clipped. It is
    close to 1 for any prediction near control, because genes differ far more in their
    baseline level than in their response: read it next to the change-based metrics.

    Examples
    --------
    >>> r2_means([1.0, 2.0, 4.0], [1.0, 3.0, 5.0])
    0.75
    """
    p, o = _vectors(genes, pred_mean=pred_mean, obs_mean=obs_mean)
    denom = float(np.sum((o - o.mean()) ** 2))
    return float(1.0 - np.sum((o - p) ** 2) / denom) if denom > 0 else float("nan")


def r2_delta_weighted(
    pred_mean: object, obs_mean: object, reference_mean: object, weights: object
) -> float:
    """DE-weighted R² of the change from a reference that does not reward predicting the mean.

    ``1 - sum_g w_g (pred_g - obs_g)^2 / sum_g w_g (obs_g - ref_g)^2``. With the mean of the
    perturbed *training* conditions as ``reference_mean`` (what :func:`evaluate` passes), a
    method that predicts that average for every condition (the train-mean baseline, or a
    model that collapses to the average perturbation) scores exactly 0, and only a
    condition-specific change scores above 0. Control-referenced deltas instead credit the
    shared control-vs-perturbed shift (the mode-collapse critique of Pearson-delta). The
    weights are the genes' absolute DE scores against control (:func:`de_ranking`), so genes
    that respond dominate.

    Parameters
    ----------
    pred_mean, obs_mean, reference_mean : array_like, shape (n_genes,)
    weights : array_like, shape (n_genes,)
        Non-negative gene weights, not all zero.

    Returns
    -------
    float

    Examples
    --------
    >>> r2_delta_weighted([1.0, 0.0], [2.0, 0.0], [0.0, 0.0], [1.0, 1.0])
    0.75
    >>> r2_delta_weighted([0.0, 0.0], [2.0, 1.0], [0.0, 0.0], [1.0, 0.0])
    0.0
    """
    p, o, r, w = _vectors(None, pred_mean=pred_mean, obs_mean=obs_mean,
                          reference_mean=reference_mean, weights=weights)
    if np.any(w < 0) or not np.any(w > 0):
        raise CausalZooError(
            "weights must be non-negative and not all zero (e.g. absolute DE scores)."
        )
    denom = float(np.sum(w * (o - r) ** 2))
    return float(1.0 - np.sum(w * (p - o) ** 2) / denom) if denom > 0 else float("nan")


def de_ranking(
    lognorm_adata: anndata.AnnData,
    groupby: str,
    groups: list[str],
    reference: str,
    layer: str | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Rank every gene of several groups against one reference with scanpy (Wilcoxon).

    One ``scanpy.tl.rank_genes_groups(..., groups=groups, reference=reference,
    method="wilcoxon", rankby_abs=True)`` call on a new AnnData of those cells (the input is
    not modified); each group is compared with the reference alone, as with
    :func:`top_de_genes`.

    Returns
    -------
    dict
        Group -> ``(order, abs_scores)``: gene positions most significant first, and the
        absolute Wilcoxon score of every gene in ``var_names`` order.

    Examples
    --------
    >>> import anndata as ad, pandas as pd
    >>> x = np.random.default_rng(0).gamma(2.0, size=(40, 5)); x[20:, 3] += 3
    >>> obs = pd.DataFrame({"p": ["ctrl"] * 20 + ["A"] * 20}, index=[str(i) for i in range(40)])
    >>> int(de_ranking(ad.AnnData(x, obs=obs), "p", ["A"], "ctrl")["A"][0][0])
    3
    """
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    groups = [str(g) for g in groups]
    x, labels = _check_de_input(lognorm_adata, groupby, [*groups, reference], layer)
    if reference in groups:
        raise CausalZooError(f"reference {reference!r} is also listed in groups; drop it.")
    rows = np.flatnonzero(labels.isin([*groups, reference]).to_numpy())
    obs = pd.DataFrame(
        {groupby: pd.Categorical(labels.to_numpy()[rows], categories=[reference, *groups])},
        index=pd.Index(lognorm_adata.obs_names[rows].astype(str)),
    )
    x_rows = x[rows]
    adata = ad.AnnData(X=x_rows.copy() if not sp.issparse(x_rows) else x_rows, obs=obs)
    adata.var_names = lognorm_adata.var_names.astype(str)
    sc.tl.rank_genes_groups(
        adata, groupby, groups=groups, reference=reference, method="wilcoxon",
        rankby_abs=True, use_raw=False, n_genes=adata.n_vars, key_added="causalzoo_de",
    )
    result = adata.uns["causalzoo_de"]
    out = {}
    for g in groups:
        names = np.asarray(result["names"][g]).astype(str)
        scores = np.abs(np.asarray(result["scores"][g], dtype=np.float64))
        order = lognorm_adata.var_names.get_indexer(names).astype(np.int64)
        abs_scores = np.zeros(adata.n_vars)
        abs_scores[order] = scores
        out[g] = (order, abs_scores)
    return out


def _check_de_input(lognorm_adata, groupby, needed, layer):
    if groupby not in lognorm_adata.obs.columns:
        raise CausalZooError(
            f"groupby={groupby!r} is not an obs column; available: "
            f"{list(lognorm_adata.obs.columns)}."
        )
    if layer is not None and layer not in lognorm_adata.layers:
        raise CausalZooError(
            f"layer={layer!r} is not in adata.layers ({list(lognorm_adata.layers)}); "
            "use layer=None for X."
        )
    labels = lognorm_adata.obs[groupby].astype(str)
    present = set(labels)
    for value in needed:
        if value not in present:
            raise CausalZooError(
                f"group {value!r} has no cells in obs[{groupby!r}]; available: "
                f"{sorted(present)[:20]}."
            )
    x = lognorm_adata.layers[layer] if layer is not None else lognorm_adata.X
    data = x.data if sp.issparse(x) else np.asarray(x)
    if data.size and float(data.min()) < 0:
        raise CausalZooError(
            "the expression matrix has negative values; DE ranking expects log-normalised "
            "(non-negative) data, e.g. from log_normalize, not scaled or centred data."
        )
    return x, labels


def top_de_genes(
    lognorm_adata: anndata.AnnData,
    groupby: str,
    group: str,
    reference: str,
    n_genes: int = 20,
    layer: str | None = None,
) -> np.ndarray:
    """Indices of the top differentially expressed genes of one group against a reference.

    Runs ``scanpy.tl.rank_genes_groups(..., groups=[group], reference=reference,
    method="wilcoxon", rankby_abs=True, use_raw=False)`` on a new AnnData holding only
    the two groups (the input is not modified) and maps the ranked gene names back to
    positions in ``var_names``.

    Parameters
    ----------
    lognorm_adata : anndata.AnnData
        Log-normalised (non-negative) expression in ``X`` (or ``layers[layer]``); scanpy
        computes log fold changes as ``log2(expm1(mean) ...)``, so scaled or centred data
        is rejected.
    groupby : str
        ``obs`` column with the condition labels.
    group, reference : str
        The perturbed condition and the control condition.
    n_genes : int
    layer : str, optional

    Returns
    -------
    numpy.ndarray of int, shape (min(n_genes, n_vars),)
        Gene positions, most significant first (by absolute score).

    Examples
    --------
    >>> import anndata as ad, pandas as pd
    >>> x = np.random.default_rng(0).gamma(2.0, size=(40, 5)); x[20:, 3] += 3
    >>> obs = pd.DataFrame({"p": ["ctrl"] * 20 + ["A"] * 20}, index=[str(i) for i in range(40)])
    >>> int(top_de_genes(ad.AnnData(x, obs=obs), "p", "A", "ctrl", n_genes=1)[0])
    3
    """
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    if groupby not in lognorm_adata.obs.columns:
        raise CausalZooError(
            f"groupby={groupby!r} is not an obs column; available: "
            f"{list(lognorm_adata.obs.columns)}."
        )
    if layer is not None and layer not in lognorm_adata.layers:
        raise CausalZooError(
            f"layer={layer!r} is not in adata.layers ({list(lognorm_adata.layers)}); "
            "use layer=None for X."
        )
    labels = lognorm_adata.obs[groupby].astype(str)
    present = set(labels)
    for name, value in (("group", group), ("reference", reference)):
        if value not in present:
            raise CausalZooError(
                f"{name}={value!r} has no cells in obs[{groupby!r}]; available: "
                f"{sorted(present)[:20]}."
            )
    if group == reference:
        raise CausalZooError(f"group and reference are both {group!r}; pick two conditions.")
    x = lognorm_adata.layers[layer] if layer is not None else lognorm_adata.X
    data = x.data if sp.issparse(x) else np.asarray(x)
    if data.size and float(data.min()) < 0:
        raise CausalZooError(
            "the expression matrix has negative values; top_de_genes expects log-normalised "
            "(non-negative) data, e.g. from log_normalize, not scaled or centred data."
        )
    n_genes = check_int("n_genes", n_genes)
    # Build a small AnnData of the two groups instead of slicing: slicing an AnnData with
    # categorical obs makes anndata 0.13 set a pandas option that pandas 3 deprecates.
    rows = np.flatnonzero(labels.isin([group, reference]).to_numpy())
    x_rows = x[rows]
    obs = pd.DataFrame(
        {groupby: pd.Categorical(labels.to_numpy()[rows], categories=[reference, group])},
        index=pd.Index(lognorm_adata.obs_names[rows].astype(str)),
    )
    adata = ad.AnnData(X=x_rows.copy() if not sp.issparse(x_rows) else x_rows, obs=obs)
    adata.var_names = lognorm_adata.var_names.astype(str)
    sc.tl.rank_genes_groups(
        adata,
        groupby,
        groups=[group],
        reference=reference,
        method="wilcoxon",
        rankby_abs=True,
        use_raw=False,
        n_genes=min(int(n_genes), adata.n_vars),
        key_added="causalzoo_de",
    )
    names = np.asarray(adata.uns["causalzoo_de"]["names"][group]).astype(str)
    idx = lognorm_adata.var_names.get_indexer(names)
    return idx.astype(np.int64)


def score_condition(
    pred_mean: object, obs_mean: object, ctrl_mean: object, de_genes: object
) -> dict[str, float]:
    """All per-condition metrics of the GEARS protocol.

    Parameters
    ----------
    pred_mean, obs_mean, ctrl_mean : array_like, shape (n_genes,)
    de_genes : array_like of int
        E.g. from :func:`top_de_genes`.

    Returns
    -------
    dict
        ``pearson_delta`` (all genes), ``pearson_delta_de``, ``mse_de`` and
        ``direction_errors_de``.

    Examples
    --------
    >>> s = score_condition([1.0, 2.0, 0.5], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0, 1])
    >>> s["mse_de"], s["direction_errors_de"]
    (0.0, 0.0)
    """
    return {
        "pearson_delta": pearson_delta(pred_mean, obs_mean, ctrl_mean),
        "pearson_delta_de": pearson_delta(pred_mean, obs_mean, ctrl_mean, genes=de_genes),
        "mse_de": mse(pred_mean, obs_mean, genes=de_genes),
        "direction_errors_de": direction_errors(pred_mean, obs_mean, ctrl_mean, de_genes),
    }
