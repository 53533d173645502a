"""Identifiability metrics: MCC, alignment, the entangled and null floors, mask recovery.

Every function takes numpy (or JAX) arrays and returns numpy values. Latent arrays are
``(n_samples, n_dims)``; arrays with more axes, such as sequences
``(n_units, n_steps, n_dims)``, are flattened to ``(n_units * n_steps, n_dims)`` (every time
step is a sample, as in the TDRL/LEAP reference code). The true latents come first, the
estimate second. ``mcc_xr`` and ``correlation_matrix_xr`` are thin wrappers for labelled
``xarray.DataArray`` inputs.

The definitions follow the reference code: MCC is the mean absolute correlation between
true and estimated dimensions after a Hungarian matching (``ilkhem/iVAE``
``metrics/mcc.py``); Spearman MCC (``bethgelab/slow_disentanglement``) is the metric for
the "permutation + component-wise invertible map" class, Pearson MCC for affine classes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from .._errors import CausalZooError, check_int

__all__ = [
    "correlation_matrix",
    "mcc",
    "align",
    "entangled_floor",
    "null_mcc",
    "mask_recovery",
    "correlation_matrix_xr",
    "mcc_xr",
]

Method = Literal["pearson", "spearman"]
_MAX_OBSERVED_COMPONENTS = 50


def _as_2d(name: str, a: object) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim > 2:  # sequences (n_units, n_steps, d): every time step is a sample
        arr = arr.reshape(-1, arr.shape[-1])
    if arr.ndim != 2:
        raise CausalZooError(
            f"{name} must be a 2-D array (n_samples, n_dims), got shape {arr.shape}; "
            "reshape it, e.g. a[:, None] for a single dimension."
        )
    if arr.shape[0] < 2 or arr.shape[1] < 1:
        raise CausalZooError(
            f"{name} has shape {arr.shape}; it needs at least 2 samples and 1 dimension."
        )
    if not np.all(np.isfinite(arr)):
        raise CausalZooError(
            f"{name} contains NaN or infinite values; drop or impute those samples first."
        )
    return arr


def _check_pair(z_true: object, z_hat: object) -> tuple[np.ndarray, np.ndarray]:
    zt = _as_2d("z_true", z_true)
    zh = _as_2d("z_hat", z_hat)
    if zt.shape[0] != zh.shape[0]:
        raise CausalZooError(
            f"z_true has {zt.shape[0]} rows but z_hat has {zh.shape[0]}; both must hold the "
            "same samples in the same order."
        )
    return zt, zh


def _check_method(method: str) -> None:
    if method not in ("pearson", "spearman"):
        raise CausalZooError(f"method={method!r} is unknown; use 'pearson' or 'spearman'.")


def _standardize(a: np.ndarray) -> np.ndarray:
    """Centre and scale columns to unit norm; constant columns become zeros."""
    size = np.abs(a).max(axis=0, keepdims=True)
    a = a - a.mean(axis=0, keepdims=True)
    norm = np.sqrt((a * a).sum(axis=0, keepdims=True))
    tiny = 1e-10 * size * np.sqrt(a.shape[0]) + 1e-300
    return np.divide(a, norm, out=np.zeros_like(a), where=norm > tiny)


def _signed_corr(zt: np.ndarray, zh: np.ndarray, method: str) -> np.ndarray:
    _check_method(method)
    if method == "spearman":
        zt = rankdata(zt, axis=0)
        zh = rankdata(zh, axis=0)
    c = _standardize(zt).T @ _standardize(zh)
    return np.clip(c, -1.0, 1.0)


def correlation_matrix(z_true: object, z_hat: object, method: Method = "pearson") -> np.ndarray:
    """Absolute correlations between every true and every estimated dimension.

    Parameters
    ----------
    z_true : array_like, shape (n, d_true)
    z_hat : array_like, shape (n, d_hat)
    method : {"pearson", "spearman"}
        Spearman correlates ranks (ties get their average rank).

    Returns
    -------
    numpy.ndarray, shape (d_true, d_hat)
        ``|corr(z_true[:, i], z_hat[:, j])|``; a constant column correlates 0 with
        everything (never NaN).

    Examples
    --------
    >>> z = np.random.default_rng(0).normal(size=(100, 2))
    >>> correlation_matrix(z, z[:, ::-1]).round(2)
    array([[0.14, 1.  ],
           [1.  , 0.14]])
    """
    zt, zh = _check_pair(z_true, z_hat)
    return np.abs(_signed_corr(zt, zh, method))


def _match(c: np.ndarray) -> np.ndarray:
    """Hungarian matching of rows (true dims) to distinct columns maximising ``c``."""
    rows, cols = linear_sum_assignment(c, maximize=True)
    matching = np.empty(c.shape[0], dtype=np.int64)
    matching[rows] = cols
    return matching


def mcc(
    z_true: object,
    z_hat: object,
    method: Method = "pearson",
    return_matching: bool = False,
) -> float | tuple[float, np.ndarray]:
    """Mean correlation coefficient after Hungarian matching.

    Each true dimension is matched to a distinct estimated dimension so that the sum of
    absolute correlations is maximal (``scipy.optimize.linear_sum_assignment``); the MCC is
    the mean over the true dimensions. An estimate with more dimensions than the truth is
    allowed (the extra ones are left unmatched).

    Parameters
    ----------
    z_true : array_like, shape (n, d_true)
        Ground-truth latents.
    z_hat : array_like, shape (n, d_hat), d_hat >= d_true
        Estimated latents (e.g. posterior means) for the same samples.
    method : {"pearson", "spearman"}
        Pearson for affine identifiability classes, Spearman for component-wise
        invertible (monotone) maps.
    return_matching : bool
        Also return ``matching`` with ``matching[i]`` the estimated column matched to true
        dimension ``i``.

    Returns
    -------
    float or (float, numpy.ndarray)

    Examples
    --------
    >>> z = np.random.default_rng(0).normal(size=(500, 3))
    >>> round(mcc(z, -2.0 * z[:, [2, 0, 1]]), 6)
    1.0
    >>> mcc(z, z[:, [1, 2, 0]], return_matching=True)[1]
    array([2, 0, 1])
    """
    zt, zh = _check_pair(z_true, z_hat)
    if zh.shape[1] < zt.shape[1]:
        raise CausalZooError(
            f"z_hat has {zh.shape[1]} dimensions but z_true has {zt.shape[1]}; MCC needs at "
            "least as many estimated dimensions as true ones. Fit a model with more latent "
            "dimensions, or score a subset of the true dimensions."
        )
    c = np.abs(_signed_corr(zt, zh, method))
    matching = _match(c)
    score = float(c[np.arange(zt.shape[1]), matching].mean())
    return (score, matching) if return_matching else score


def align(
    z_true: object,
    z_hat: object,
    method: Method = "pearson",
    scale: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Permute and sign-flip estimated columns onto their matched true dimensions.

    Parameters
    ----------
    z_true : array_like, shape (n, d_true)
    z_hat : array_like, shape (n, d_hat), d_hat >= d_true
    method : {"pearson", "spearman"}
        Correlation used for the matching and the signs.
    scale : bool
        If True, also map each aligned column affinely onto its true dimension by least
        squares (``a * z_hat_j + b``, with ``a`` carrying the sign).

    Returns
    -------
    z_hat_aligned : numpy.ndarray, shape (n, d_true)
        ``signs[i] * z_hat[:, permutation[i]]`` (or its least-squares affine fit).
    permutation : numpy.ndarray of int, shape (d_true,)
        Estimated column matched to each true dimension.
    signs : numpy.ndarray of float, shape (d_true,)
        +1 or -1, the sign of the matched correlation.

    Examples
    --------
    >>> z = np.random.default_rng(0).normal(size=(200, 2))
    >>> za, perm, signs = align(z, np.c_[3 * z[:, 1], -z[:, 0]], scale=True)
    >>> perm, signs, bool(np.allclose(za, z))
    (array([1, 0]), array([-1.,  1.]), True)
    """
    zt, zh = _check_pair(z_true, z_hat)
    if zh.shape[1] < zt.shape[1]:
        raise CausalZooError(
            f"z_hat has {zh.shape[1]} dimensions but z_true has {zt.shape[1]}; alignment "
            "needs at least as many estimated dimensions as true ones."
        )
    signed = _signed_corr(zt, zh, method)
    perm = _match(np.abs(signed))
    signs = np.where(signed[np.arange(zt.shape[1]), perm] < 0, -1.0, 1.0)
    aligned = zh[:, perm] * signs
    if scale:
        xc = aligned - aligned.mean(axis=0)
        var = (xc * xc).sum(axis=0)
        slope = np.divide(
            (xc * (zt - zt.mean(axis=0))).sum(axis=0), var, out=np.zeros_like(var), where=var > 0
        )
        aligned = xc * slope + zt.mean(axis=0)
    return aligned, perm, signs


def _haar_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed orthogonal matrix (QR of a Gaussian matrix, sign-corrected)."""
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _principal_components(x: np.ndarray, k: int) -> np.ndarray:
    xc = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    return u[:, :k] * s[:k]


def entangled_floor(
    z_true: object,
    *,
    n_rotations: int = 20,
    seed: int = 0,
    x: object | None = None,
    method: Method = "pearson",
) -> dict[str, float]:
    """MCC that entangled (non-identified) representations already reach.

    Identifiability thresholds must be read relative to this floor: a random rotation of
    the true latents scores MCC ≈ 0.84 / 0.74 / 0.63 at d = 3 / 5 / 8.

    Parameters
    ----------
    z_true : array_like, shape (n, d)
        Ground-truth latents. Columns are standardised before rotating.
    n_rotations : int
        Number of Haar-random orthogonal matrices ``Q``.
    seed : int
        Seed of the rotations.
    x : array_like, shape (n, p), optional
        Observations. When given, also score the raw observations as an estimate: true
        dimensions are matched to distinct observed columns; when ``p > 50`` the first 50
        principal components of ``x`` (centred, not scaled) are used instead of its
        columns. If fewer columns than true dimensions are available, unmatched true
        dimensions count as 0. Pass log-normalised data rather than raw counts.
    method : {"pearson", "spearman"}

    Returns
    -------
    dict
        ``"rotation"``: mean MCC between ``z`` and ``z @ Q``; ``"rotation_max"``: its
        maximum over rotations; ``"observations"`` (only with ``x``): MCC of ``x``.

    Examples
    --------
    >>> z = np.random.default_rng(0).normal(size=(2000, 5))
    >>> floor = entangled_floor(z, n_rotations=50)
    >>> 0.65 < floor["rotation"] < 0.85
    True
    """
    zt = _as_2d("z_true", z_true)
    _check_method(method)
    n_rotations = check_int("n_rotations", n_rotations)
    rng = np.random.default_rng(seed)
    zs = _standardize(zt) * np.sqrt(zt.shape[0])
    scores = np.array(
        [mcc(zt, zs @ _haar_orthogonal(zt.shape[1], rng), method) for _ in range(n_rotations)]
    )
    out = {"rotation": float(scores.mean()), "rotation_max": float(scores.max())}
    if x is not None:
        xa = _as_2d("x", x)
        if xa.shape[0] != zt.shape[0]:
            raise CausalZooError(
                f"x has {xa.shape[0]} rows but z_true has {zt.shape[0]}; both must hold the "
                "same samples in the same order."
            )
        if xa.shape[1] > _MAX_OBSERVED_COMPONENTS:
            xa = _principal_components(xa, _MAX_OBSERVED_COMPONENTS)
        c = np.abs(_signed_corr(zt, xa, method))
        rows, cols = linear_sum_assignment(c, maximize=True)
        out["observations"] = float(c[rows, cols].sum() / zt.shape[1])
    return out


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Rank-based (Mann-Whitney) AUROC with average ranks for ties; NaN if one class."""
    pos = labels.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mask_recovery(
    true_mask: object,
    mask_prob: object,
    matching: object | None = None,
) -> dict[str, float]:
    """How well estimated perturbation masks recover the true ones.

    Parameters
    ----------
    true_mask : array_like, shape (T, K)
        Binary ground-truth masks (perturbation x response latent).
    mask_prob : array_like, shape (T, K_hat), K_hat >= K
        Estimated probabilities that each mask entry is active.
    matching : array_like of int, shape (K,), optional
        Estimated column for each true latent dimension (e.g. from
        ``mcc(..., return_matching=True)`` restricted to the response block). If None,
        columns are matched by the Hungarian algorithm on mask agreement
        ``sum_t m_tk p_tj + (1 - m_tk)(1 - p_tj)``.

    Returns
    -------
    dict
        ``"auroc"`` (rank-based, ties averaged; NaN when the true mask is all 0 or all 1),
        ``"f1"`` and ``"accuracy"`` with entries called active when ``p >= 0.5`` (F1 is 1
        when neither the truth nor the estimate has an active entry).

    Examples
    --------
    >>> m = np.array([[1, 0], [0, 1], [1, 1]])
    >>> mask_recovery(m, m[:, ::-1] * 0.9)
    {'auroc': 1.0, 'f1': 1.0, 'accuracy': 1.0}
    """
    m = np.asarray(true_mask, dtype=np.float64)
    p = np.asarray(mask_prob, dtype=np.float64)
    if m.ndim != 2 or p.ndim != 2:
        raise CausalZooError(
            f"true_mask and mask_prob must be 2-D (perturbations, latents); got shapes "
            f"{m.shape} and {p.shape}."
        )
    if m.shape[0] != p.shape[0]:
        raise CausalZooError(
            f"true_mask has {m.shape[0]} perturbations (rows) but mask_prob has {p.shape[0]}; "
            "order both by the same perturbations."
        )
    if p.shape[1] < m.shape[1]:
        raise CausalZooError(
            f"mask_prob has {p.shape[1]} latent columns but true_mask has {m.shape[1]}; an "
            "estimate needs at least as many columns as the truth."
        )
    if not np.all((m == 0) | (m == 1)):
        raise CausalZooError("true_mask must contain only 0 and 1; threshold it first.")
    if not np.all((p >= 0) & (p <= 1)):
        raise CausalZooError(
            "mask_prob must hold probabilities in [0, 1]; apply a sigmoid to logits first."
        )
    if matching is None:
        agreement = m.T @ p + (1 - m).T @ (1 - p)
        idx = _match(agreement)
    else:
        idx = np.asarray(matching, dtype=np.int64).reshape(-1)
        if idx.shape[0] != m.shape[1] or np.any(idx < 0) or np.any(idx >= p.shape[1]):
            raise CausalZooError(
                f"matching={idx.tolist()} must give one estimated column in "
                f"[0, {p.shape[1]}) for each of the {m.shape[1]} true latent dimensions."
            )
    labels = m.ravel()
    scores = p[:, idx].ravel()
    pred = scores >= 0.5
    truth = labels.astype(bool)
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    fn = int(np.sum(~pred & truth))
    denom = 2 * tp + fp + fn
    return {
        "auroc": _auroc(labels, scores),
        "f1": float(2 * tp / denom) if denom > 0 else 1.0,
        "accuracy": float(np.mean(pred == truth)),
    }


# ------------------------------------------------------------------------ null MCC


def null_mcc(
    n_samples: int,
    n_true: int,
    n_hat: int | None = None,
    *,
    n_draws: int = 50,
    quantile: float = 0.99,
    method: Method = "pearson",
    seed: int = 0,
) -> float:
    """The MCC that an estimate independent of the truth reaches by chance.

    Simulates ``n_draws`` pairs of independent standard-normal arrays of the given shapes
    and returns the ``quantile`` of their MCC: a score at or below it carries no evidence
    of recovery at all. It shrinks like ``1 / sqrt(n_samples)`` (about 0.13 at
    ``n = 256`` and 0.07 at ``n = 1024`` for ``d <= 20``), and grows with ``n_hat``
    because more columns give the matching more chances.

    Parameters
    ----------
    n_samples : int
    n_true : int
        True dimensions ``d``.
    n_hat : int, optional
        Estimated dimensions (default ``n_true``).
    n_draws : int
    quantile : float in (0, 1]
        1 gives the maximum over draws.
    method : {"pearson", "spearman"}
    seed : int

    Returns
    -------
    float

    Examples
    --------
    >>> null_mcc(1000, 5) < 0.1
    True
    """
    _check_method(method)
    n_samples = check_int("n_samples", n_samples, 3)
    n_true, n_draws = check_int("n_true", n_true), check_int("n_draws", n_draws)
    n_hat = check_int("n_hat", n_true if n_hat is None else n_hat, n_true,
                      meaning="at least n_true")
    if not 0 < quantile <= 1:
        raise CausalZooError(f"quantile={quantile!r} must lie in (0, 1].")
    rng = np.random.default_rng(seed)
    scores = [
        mcc(rng.normal(size=(n_samples, n_true)), rng.normal(size=(n_samples, n_hat)), method)
        for _ in range(n_draws)
    ]
    return float(np.quantile(scores, quantile))


# --------------------------------------------------------------- xarray wrappers


def _da_to_2d(name: str, da: object, latent_dim: str, sample_dims: list | None = None):
    import xarray as xr

    if not isinstance(da, xr.DataArray):
        raise CausalZooError(f"{name} must be an xarray.DataArray, got {type(da).__name__}.")
    if latent_dim not in da.dims:
        raise CausalZooError(
            f"{name} has dims {tuple(da.dims)} but no latent dimension {latent_dim!r}; pass "
            "latent_dim=<the name of the latent axis>."
        )
    own = [dim for dim in da.dims if dim != latent_dim]
    if sample_dims is not None and sorted(map(str, own)) != sorted(map(str, sample_dims)):
        raise CausalZooError(
            f"{name} has sample dims {own} but z_true has {list(sample_dims)}; both must "
            "share their sample dimensions (rename or stack them first)."
        )
    sample_dims = own if sample_dims is None else list(sample_dims)
    da = da.transpose(*sample_dims, latent_dim)
    k = da.sizes[latent_dim]
    labels = np.asarray(da[latent_dim]) if latent_dim in da.coords else np.arange(k)
    return da.values.reshape(-1, k), labels, sample_dims


def correlation_matrix_xr(
    z_true: object,
    z_hat: object,
    *,
    latent_dim: str = "latent",
    hat_latent_dim: str | None = None,
    method: Method = "pearson",
):
    """:func:`correlation_matrix` for ``xarray.DataArray`` inputs.

    Every dimension other than the latent one is a sample dimension; both arrays must
    share them (by name, in any order: ``z_hat`` is transposed to ``z_true``'s order before
    both are flattened).

    Parameters
    ----------
    z_true, z_hat : xarray.DataArray
    latent_dim : str
        Name of the latent dimension of ``z_true`` (and of ``z_hat`` unless
        ``hat_latent_dim`` is given).
    hat_latent_dim : str, optional
    method : {"pearson", "spearman"}

    Returns
    -------
    xarray.DataArray
        Dims ``("latent_true", "latent_hat")`` with the latent coordinates of the inputs.

    Examples
    --------
    >>> import xarray as xr
    >>> z = xr.DataArray(np.random.default_rng(0).normal(size=(50, 2)), dims=("cells", "latent"))
    >>> correlation_matrix_xr(z, z).dims
    ('latent_true', 'latent_hat')
    """
    import xarray as xr

    zt, ct, dims = _da_to_2d("z_true", z_true, latent_dim)
    zh, ch, _ = _da_to_2d("z_hat", z_hat, hat_latent_dim or latent_dim, dims)
    return xr.DataArray(
        correlation_matrix(zt, zh, method),
        dims=("latent_true", "latent_hat"),
        coords={"latent_true": ct, "latent_hat": ch},
    )


def mcc_xr(
    z_true: object,
    z_hat: object,
    *,
    latent_dim: str = "latent",
    hat_latent_dim: str | None = None,
    method: Method = "pearson",
) -> float:
    """:func:`mcc` for ``xarray.DataArray`` inputs (see :func:`correlation_matrix_xr`).

    Parameters
    ----------
    z_true, z_hat : xarray.DataArray
    latent_dim : str
    hat_latent_dim : str, optional
    method : {"pearson", "spearman"}

    Returns
    -------
    float

    Examples
    --------
    >>> import xarray as xr
    >>> z = xr.DataArray(np.random.default_rng(0).normal(size=(4, 30, 2)),
    ...                  dims=("units", "time", "latent"))
    >>> round(mcc_xr(z, -z.rename(latent="k"), hat_latent_dim="k"), 6)
    1.0
    """
    zt, _, dims = _da_to_2d("z_true", z_true, latent_dim)
    zh, _, _ = _da_to_2d("z_hat", z_hat, hat_latent_dim or latent_dim, dims)
    return mcc(zt, zh, method)
