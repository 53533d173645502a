"""Cell-level distances between predicted and observed cells: energy distance and MMD.

Mean-profile metrics cannot tell a model that predicts the right mean with the wrong spread
(or the mean alone, as GEARS does) from one that predicts the cells. These two compare the
distributions of cells. :func:`evaluate` computes them in a fixed space: the first principal
components of the log-normalised training cells (one PCA per split, fitted with scanpy on
the training cells only, so every method and seed is measured in the same coordinates), on
at most ``max_cells`` cells per side drawn with a fixed seed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial.distance import cdist

from .._errors import CausalZooError

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["energy_distance", "mmd", "median_bandwidth", "PCASpace", "subsample"]


def _cells(name: str, a: object) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 1:
        raise CausalZooError(
            f"{name} must be a (n_cells, n_features) array with at least one cell; got shape "
            f"{np.shape(a)}."
        )
    if not np.all(np.isfinite(x)):
        raise CausalZooError(f"{name} has non-finite values; drop or fix those cells.")
    return x


def _pair(x: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    a, b = _cells("x", x), _cells("y", y)
    if a.shape[1] != b.shape[1]:
        raise CausalZooError(
            f"x has {a.shape[1]} features but y has {b.shape[1]}; use the same space."
        )
    return a, b


def _within(d: np.ndarray) -> float:
    """Mean over distinct pairs (off-diagonal) of a square matrix."""
    n = d.shape[0]
    return float((d.sum() - np.trace(d)) / (n * (n - 1)))


def _pair2(x: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    a, b = _pair(x, y)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise CausalZooError(
            f"Cell-level distances need at least 2 cells per sample; got {a.shape[0]} and "
            f"{b.shape[0]}."
        )
    return a, b


def energy_distance(x: object, y: object) -> float:
    """Energy distance between two samples of cells (Székely and Rizzo), unbiased estimate.

    ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` with Euclidean norms; the cross term averages all
    pairs and the within-sample terms average pairs of *distinct* cells (U-statistics), so
    the estimate does not depend on how many cells each method predicts (a V-statistic
    would favour larger samples). Its expectation is 0 when both samples come from one
    distribution and positive otherwise; small samples can give small negative values.

    Parameters
    ----------
    x, y : array_like, shape (n, d) and (m, d)
        Cells (e.g. principal-component coordinates), at least 2 each; 1-D input is one
        feature.

    Returns
    -------
    float

    Examples
    --------
    >>> energy_distance([0.0, 1.0], [3.0, 4.0])  # 2 * 3 - 1 - 1
    4.0
    """
    a, b = _pair2(x, y)
    return float(2 * cdist(a, b).mean() - _within(cdist(a, a)) - _within(cdist(b, b)))


def median_bandwidth(x: object) -> float:
    """Median of the pairwise Euclidean distances between distinct cells (1.0 if all equal).

    Examples
    --------
    >>> median_bandwidth([[0.0], [1.0], [3.0]])
    2.0
    """
    a = _cells("x", x)
    d = cdist(a, a)[np.triu_indices(a.shape[0], k=1)]
    med = float(np.median(d)) if d.size else 0.0
    return med if med > 0 else 1.0


def mmd(x: object, y: object, bandwidths: object = 1.0) -> float:
    """Squared maximum mean discrepancy with a sum of Gaussian kernels (unbiased estimate).

    ``MMD² = E k(X, X') + E k(Y, Y') - 2 E k(X, Y)``, the within-sample terms over pairs of
    distinct cells (U-statistic, so small samples can give small negative values),
    ``k(a, b) = sum_s exp(-|a - b|² / (2 s²))`` over the bandwidths ``s``. :func:`evaluate`
    uses the bandwidths ``(0.5, 1, 2)`` times the :func:`median_bandwidth` of the observed
    cells of each condition, so every method is scored with the same kernel.

    Parameters
    ----------
    x, y : array_like, shape (n, d) and (m, d)
        At least 2 cells each.
    bandwidths : float or sequence of float
        Kernel widths, positive.

    Returns
    -------
    float

    Examples
    --------
    >>> # exp(-1/2) + exp(-1/2) - 2 * mean(exp(-[4.5, 8, 2, 4.5]))
    >>> round(mmd([0.0, 1.0], [3.0, 4.0], bandwidths=1.0), 6)
    1.134117
    """
    a, b = _pair2(x, y)
    widths = np.atleast_1d(np.asarray(bandwidths, dtype=np.float64))
    if widths.size == 0 or np.any(~(widths > 0)):
        raise CausalZooError(f"bandwidths={bandwidths!r} must be positive numbers.")

    def k(u, v):
        d2 = cdist(u, v, "sqeuclidean")
        return sum(np.exp(-d2 / (2 * s * s)) for s in widths)

    return float(_within(k(a, a)) + _within(k(b, b)) - 2 * k(a, b).mean())


def subsample(x: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """At most ``max_cells`` rows of ``x``, drawn without replacement with ``seed``."""
    if x.shape[0] <= max_cells:
        return x
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(x.shape[0], size=max_cells, replace=False))]


class PCASpace:
    """A PCA of log-normalised cells, fitted once with scanpy and applied to any cells.

    Parameters
    ----------
    lognorm : array_like, shape (n_cells, n_genes)
        The cells that define the space (the training cells).
    n_comps : int
        Components kept (at most ``min(n_cells, n_genes) - 1``).

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(50, 6))
    >>> PCASpace(x, n_comps=2).transform(x).shape
    (50, 2)
    """

    def __init__(self, lognorm: object, n_comps: int = 30):
        import anndata as ad
        import scanpy as sc

        x = np.asarray(lognorm, dtype=np.float32)
        if x.ndim != 2:
            raise CausalZooError(f"lognorm must be 2-D (cells x genes), got shape {x.shape}.")
        n = min(int(n_comps), min(x.shape) - 1)
        if n < 1:
            raise CausalZooError(
                f"A PCA needs at least 2 cells and 2 genes; got shape {x.shape}."
            )
        adata: anndata.AnnData = ad.AnnData(X=x)
        sc.pp.pca(adata, n_comps=n, zero_center=True, svd_solver="arpack", random_state=0)
        self.mean = x.mean(axis=0).astype(np.float64)
        self.components = np.asarray(adata.varm["PCs"], dtype=np.float64)  # genes x comps
        self.n_comps = n

    def transform(self, lognorm: object) -> np.ndarray:
        """Coordinates of cells in the space, shape ``(n_cells, n_comps)``."""
        x = np.asarray(lognorm, dtype=np.float64)
        return (x - self.mean) @ self.components

    def inverse_transform(self, coords: object) -> np.ndarray:
        """Back to gene space (the part of a cell inside the span of the components)."""
        return np.asarray(coords, dtype=np.float64) @ self.components.T + self.mean
