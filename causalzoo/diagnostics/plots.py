"""Plots of a fit: ELBO curve, count PPC panels, perturbation × latent heatmaps, latent-vs-truth
correlations and the learned latent graph.

Every function draws with matplotlib on a new figure (or the ``ax`` given) and returns the
``matplotlib.figure.Figure``; nothing is shown or saved. They never select a backend: scripts
and the ``causalzoo report`` command select ``Agg`` themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .._errors import CausalZooError
from .variational import count_ppc

__all__ = [
    "plot_elbo",
    "plot_count_ppc",
    "plot_perturbation_heatmap",
    "plot_latent_correlation",
    "plot_latent_graph",
]


def _figure(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def plot_elbo(elbo, *, ax=None, skip_fraction: float = 0.1):
    """ELBO per step with a running mean; the y-range ignores the first ``skip_fraction``
    of the steps, which would flatten the rest.

    Parameters
    ----------
    elbo : array or xarray.DataTree
        The ELBO per step, or a DataTree with ``sample_stats.elbo``.
    """
    if isinstance(elbo, xr.DataTree):
        elbo = elbo["sample_stats"].to_dataset()["elbo"].values
    values = np.asarray(elbo, dtype=float).reshape(-1)
    if values.size == 0:
        raise CausalZooError("The ELBO history is empty: fit the model first.")
    fig, ax = _figure(ax, (6, 3.5))
    steps = np.arange(1, values.size + 1)
    ax.plot(steps, values, lw=0.5, alpha=0.4, label="per step")
    window = max(1, values.size // 50)
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window} steps")
    tail = values[int(values.size * skip_fraction) :]
    tail = tail[np.isfinite(tail)]
    if tail.size > 1 and np.ptp(tail) > 0:
        lo, hi = np.percentile(tail, [1, 100])
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set(xlabel="SVI step", ylabel="ELBO (nats)", title="ELBO during the fit")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _band(rep, dims=("chain", "draw"), prob=0.89):
    lo = rep.quantile((1 - prob) / 2, dim=list(dims)).values
    hi = rep.quantile(1 - (1 - prob) / 2, dim=list(dims)).values
    return lo, hi


def plot_count_ppc(dt, var_name: str = "x"):
    """Three posterior predictive panels for counts: per-gene mean against variance
    (log-log), per-gene zero fraction, and the library-size distribution, each observed
    against the 89% band of the replicates (:func:`~causalzoo.diagnostics.count_ppc`)."""
    import matplotlib.pyplot as plt

    ppc = count_ppc(dt, var_name)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    mean, var = ppc["mean"].values, ppc["variance"].values
    rep_mean = ppc["mean_rep"].median(("chain", "draw")).values
    rep_var = ppc["variance_rep"].median(("chain", "draw")).values
    lo, hi = _band(ppc["variance_rep"])
    ax = axes[0]
    keep = (mean > 0) & (var > 0)
    ax.vlines(mean[keep], np.maximum(lo[keep], 1e-3), np.maximum(hi[keep], 1e-3), color="C1",
              alpha=0.4, lw=1, label="replicated 89%")
    ax.scatter(rep_mean[keep], np.maximum(rep_var[keep], 1e-3), s=8, color="C1",
               label="replicated median")
    ax.scatter(mean[keep], var[keep], s=8, color="C0", label="observed")
    grid = np.geomspace(max(mean[keep].min(), 1e-3), mean[keep].max(), 50) if keep.any() else None
    if grid is not None:
        ax.plot(grid, grid, color="grey", lw=0.8, ls="--", label="Poisson (var = mean)")
    ax.set(xscale="log", yscale="log", xlabel="gene mean", ylabel="gene variance",
           title="Mean-variance per gene")
    ax.legend(fontsize=7)

    ax = axes[1]
    zf = ppc["zero_fraction"].values
    lo, hi = _band(ppc["zero_fraction_rep"])
    order = np.argsort(mean)
    x = np.arange(zf.size)
    ax.fill_between(x, lo[order], hi[order], color="C1", alpha=0.3, step="mid",
                    label="replicated 89%")
    ax.plot(x, zf[order], ".", color="C0", ms=3, label="observed")
    ax.set(xlabel="genes, by increasing mean", ylabel="fraction of zeros",
           title="Zero fraction per gene")
    ax.legend(fontsize=7)

    ax = axes[2]
    lib = ppc["library_size"].values
    rep = ppc["library_size_rep"]
    bins = np.histogram_bin_edges(np.concatenate([lib, rep.values.reshape(-1)]), bins=40)
    n_show = min(20, rep.sizes["draw"])
    for i in range(n_show):
        ax.hist(rep.isel(chain=0, draw=i).values, bins=bins, histtype="step", color="C1",
                alpha=0.25, density=True, label="replicated" if i == 0 else None)
    ax.hist(lib, bins=bins, histtype="step", color="C0", lw=2, density=True, label="observed")
    ax.set(xlabel="library size", ylabel="density", title="Library size per cell")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _frame_of(values, name):
    if isinstance(values, pd.DataFrame):
        return values
    if isinstance(values, xr.DataArray):
        if values.ndim != 2:
            raise CausalZooError(f"{name} must be 2-D (perturbations, latents); got {values.dims}.")
        rows, cols = values.dims
        return pd.DataFrame(values.values, index=values[rows].values, columns=values[cols].values)
    values = np.asarray(values)
    if values.ndim != 2:
        raise CausalZooError(f"{name} must be 2-D (perturbations, latents); got {values.shape}.")
    return pd.DataFrame(values)


def plot_perturbation_heatmap(mask=None, shift=None, *, dt=None):
    """Perturbations × latents heatmaps: the posterior mask probability and the posterior
    mean shift.

    Pass ``mask`` and/or ``shift`` (DataFrames such as ``model.mask_probability()`` and
    ``model.shift()``, DataArrays or arrays), or a DataTree ``dt`` with ``posterior.mask``
    and ``posterior.shift``, whose posterior means are shown.
    """
    import matplotlib.pyplot as plt

    if dt is not None:
        post = dt["posterior"].to_dataset()
        if mask is None and "mask" in post:
            mask = post["mask"].mean(("chain", "draw"))
        if shift is None and "shift" in post:
            shift = post["shift"].mean(("chain", "draw"))
    panels = [(n, _frame_of(v, n)) for n, v in (("mask", mask), ("shift", shift)) if v is not None]
    if not panels:
        raise CausalZooError("Nothing to plot: pass mask=, shift= or a DataTree with them.")
    rows, cols = panels[0][1].shape
    fig, axes = plt.subplots(
        1, len(panels), figsize=(len(panels) * (0.45 * cols + 2.8), 0.25 * rows + 1.8),
        squeeze=False,
    )
    for ax, (name, frame) in zip(axes[0], panels, strict=True):
        values = frame.to_numpy(dtype=float)
        if name == "mask":
            im = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_title("P(perturbation targets latent)", fontsize=9)
        else:
            lim = max(np.abs(values).max(), 1e-6)
            im = ax.imshow(values, vmin=-lim, vmax=lim, cmap="RdBu_r", aspect="auto")
            ax.set_title("posterior mean shift", fontsize=9)
        ax.set_yticks(range(frame.shape[0]), [str(i) for i in frame.index], fontsize=7)
        ax.set_xticks(range(frame.shape[1]), [str(c) for c in frame.columns], rotation=90,
                      fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig


def plot_latent_correlation(z_true, z_hat, *, method: str = "spearman", true_names=None,
                            hat_names=None, ax=None):
    """``|corr|`` between every true and every estimated latent, columns reordered by the
    Hungarian matching (so a perfect recovery is a bright diagonal), with the MCC in the
    title."""
    from scipy.optimize import linear_sum_assignment

    from ..identifiability import correlation_matrix, mcc

    z_true, z_hat = np.asarray(z_true), np.asarray(z_hat)
    if z_true.ndim != 2 or z_hat.ndim != 2 or z_true.shape[0] != z_hat.shape[0]:
        raise CausalZooError(
            f"z_true {z_true.shape} and z_hat {z_hat.shape} must be (cells, latents) arrays "
            "over the same cells."
        )
    # correlation_matrix wants at least as many estimated dims as true ones; the |corr|
    # matrix is symmetric in its roles, so compute it the other way round when needed.
    if z_hat.shape[1] >= z_true.shape[1]:
        corr = correlation_matrix(z_true, z_hat, method=method)
        score = mcc(z_true, z_hat, method=method)
    else:
        corr = correlation_matrix(z_hat, z_true, method=method).T
        score = mcc(z_hat, z_true, method=method)
    rows, cols = linear_sum_assignment(corr, maximize=True)
    cols = list(cols[np.argsort(rows)])
    order = cols + [j for j in range(corr.shape[1]) if j not in set(cols)]
    fig, ax = _figure(ax, (0.5 * corr.shape[1] + 2.8, 0.45 * corr.shape[0] + 1.8))
    im = ax.imshow(corr[:, order], vmin=0, vmax=1, cmap="magma", aspect="auto")
    true_names = list(true_names or [f"true {i}" for i in range(corr.shape[0])])
    hat_names = list(hat_names or [f"est {j}" for j in range(corr.shape[1])])
    ax.set_yticks(range(corr.shape[0]), true_names, fontsize=7)
    ax.set_xticks(range(corr.shape[1]), [hat_names[j] for j in order], rotation=90, fontsize=7)
    ax.set_title(f"|{method} corr|, matched; MCC = {score:.3f}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig


def plot_latent_graph(weights, *, names: Sequence[str] | None = None, threshold: float = 0.1,
                      ax=None):
    """The learned latent graph: nodes on a circle, an arrow ``j -> i`` for every
    ``|W[i, j]| > threshold`` (``z_i = sum_j W[i, j] z_j + ...``), width by ``|W|``, colour
    by sign (red positive, blue negative)."""
    w = np.asarray(weights, dtype=float)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise CausalZooError(f"weights must be a square (K, K) matrix; got shape {w.shape}.")
    k = w.shape[0]
    names = list(names or [f"z{i}" for i in range(k)])
    if len(names) != k:
        raise CausalZooError(
            f"names has {len(names)} entries for a {k} x {k} graph: pass one name per latent."
        )
    fig, ax = _figure(ax, (4.5, 4.5))
    angle = np.pi / 2 - 2 * np.pi * np.arange(k) / max(k, 1)
    pos = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    wmax = max(np.abs(w).max(), 1e-12)
    n_edges = 0
    for i in range(k):
        for j in range(k):
            if i != j and abs(w[i, j]) > threshold:
                n_edges += 1
                ax.annotate(
                    "", xy=pos[i] * 0.88, xytext=pos[j] * 0.88,
                    arrowprops=dict(arrowstyle="-|>", lw=0.5 + 3 * abs(w[i, j]) / wmax,
                                    color="C3" if w[i, j] > 0 else "C0", alpha=0.8,
                                    shrinkA=8, shrinkB=8),
                )
    ax.scatter(pos[:, 0], pos[:, 1], s=600, color="white", edgecolor="black", zorder=3)
    for p, name in zip(pos, names, strict=True):
        ax.text(p[0], p[1], name, ha="center", va="center", fontsize=7, zorder=4)
    ax.set(xlim=(-1.3, 1.3), ylim=(-1.3, 1.3), aspect="equal")
    ax.axis("off")
    ax.set_title(f"Latent graph: {n_edges} edges with |W| > {threshold}", fontsize=9)
    fig.tight_layout()
    return fig
