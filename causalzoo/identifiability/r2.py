"""Linear and kernel-ridge R² for (block) identifiability, fitted on train, scored on test.

Arrays as in :mod:`causalzoo.identifiability.metrics` (true latents first, estimate second;
sequences flattened over time). Also available as ``cz.identifiability.r2_linear`` and
``cz.identifiability.r2_kernel_ridge``.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .._errors import CausalZooError, check_int
from .metrics import _check_pair

__all__ = ["r2_linear", "r2_kernel_ridge"]


def _split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < test_fraction < 1:
        raise CausalZooError(f"test_fraction={test_fraction!r} must lie in (0, 1).")
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * float(test_fraction))
    if n_test < 2 or n - n_test < 2:
        raise CausalZooError(
            f"test_fraction={test_fraction} of {n} samples leaves fewer than 2 samples in the "
            "train or the test split; pass more samples or another test_fraction."
        )
    return order[n_test:], order[:n_test]


def _r2_scores(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column (a constant column scores 0 if missed)."""
    ss_res = ((y - pred) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    ok = ss_tot > 0
    out = np.where(ss_res == 0, 1.0, 0.0)
    out[ok] = 1.0 - ss_res[ok] / ss_tot[ok]
    return out


def _summarise(r2: np.ndarray, per_dimension: bool) -> float | np.ndarray:
    return r2 if per_dimension else float(r2.mean())


def r2_linear(
    z_true: object,
    z_hat: object,
    *,
    test_fraction: float = 0.5,
    seed: int = 0,
    per_dimension: bool = False,
) -> float | np.ndarray:
    """Out-of-sample R² of predicting each true dimension linearly from the estimate.

    An affine least-squares map ``z_true ≈ z_hat A + b`` is fitted on a random train split
    and scored on the held-out test split. R² = 1 means the true block is an affine
    function of the estimate (the identifiability class of iVAE-type models up to ``A``).

    Parameters
    ----------
    z_true : array_like, shape (n, d_true)
        The block to be explained.
    z_hat : array_like, shape (n, d_hat)
        The estimate used as regressors (any ``d_hat``).
    test_fraction : float in (0, 1)
    seed : int
        Seed of the split.
    per_dimension : bool
        Return the R² of every true dimension instead of their mean.

    Returns
    -------
    float or numpy.ndarray of shape (d_true,)

    Examples
    --------
    >>> z = np.random.default_rng(0).normal(size=(400, 3))
    >>> round(r2_linear(z, z @ np.array([[1.0, 2, 0], [0, 1, 0], [3, 0, 1]]) + 5), 6)
    1.0
    """
    zt, zh = _check_pair(z_true, z_hat)
    train, test = _split(zt.shape[0], test_fraction, seed)
    design = np.c_[zh, np.ones(zh.shape[0])]
    coef, *_ = np.linalg.lstsq(design[train], zt[train], rcond=None)
    return _summarise(_r2_scores(zt[test], design[test] @ coef), per_dimension)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _krr_fit_predict(
    x_tr: np.ndarray, y_tr: np.ndarray, x_ev: np.ndarray, gamma: float, alphas: np.ndarray
) -> np.ndarray:
    """Kernel-ridge predictions ``K_ev (K + alpha I)^-1 y`` for every alpha.

    One Cholesky factorisation per alpha.
    """
    from scipy.linalg import cho_factor, cho_solve

    k_tr = np.exp(-gamma * _sq_dists(x_tr, x_tr))
    k_ev = np.exp(-gamma * _sq_dists(x_ev, x_tr))
    eye = np.eye(k_tr.shape[0])
    return np.stack([k_ev @ cho_solve(cho_factor(k_tr + a * eye), y_tr) for a in alphas])


def r2_kernel_ridge(
    z_true: object,
    z_hat: object,
    *,
    alphas: tuple[float, ...] = (1.0, 0.1, 0.01, 0.001),
    gammas: tuple[float, ...] | None = None,
    n_folds: int = 3,
    test_fraction: float = 0.5,
    max_train: int = 1000,
    seed: int = 0,
    per_dimension: bool = False,
) -> float | np.ndarray:
    """Out-of-sample R² of an RBF kernel-ridge regression from the estimate to the truth.

    The nonlinear R² for block identifiability: is the true block a (any smooth) function
    of the estimated block? Both arrays are standardised with train statistics; the ridge
    penalty ``alpha`` and the kernel width ``gamma`` are picked by ``n_folds``-fold
    cross-validation on the train split (mean R² over dimensions), the model is refitted
    on the whole train split and scored on the test split. Unlike the TDRL reference
    (fit and score in-sample), a test split keeps an over-flexible kernel honest.

    Parameters
    ----------
    z_true : array_like, shape (n, d_true)
    z_hat : array_like, shape (n, d_hat)
    alphas : tuple of float
        Ridge penalties to try (> 0).
    gammas : tuple of float, optional
        RBF widths ``exp(-gamma |a - b|^2)`` to try; default ``logspace(-2, 2, 4) / d_hat``.
    n_folds : int
        Cross-validation folds (>= 2).
    test_fraction : float in (0, 1)
    max_train : int
        At most this many train samples (a random subset) enter the kernel: the cost is
        ``O(max_train^3)``.
    seed : int
        Seed of the split and the subset.
    per_dimension : bool
        Return the R² of every true dimension instead of their mean.

    Returns
    -------
    float or numpy.ndarray of shape (d_true,)

    Examples
    --------
    >>> z = np.random.default_rng(0).uniform(-2, 2, size=(600, 2))
    >>> r2_kernel_ridge(z, np.tanh(z[:, ::-1])) > 0.95
    True
    """
    zt, zh = _check_pair(z_true, z_hat)
    if not alphas or any(not a > 0 for a in alphas):
        raise CausalZooError(f"alphas={alphas!r} must be a non-empty tuple of numbers > 0.")
    if gammas is None:
        gammas = tuple(np.logspace(-2, 2, 4) / zh.shape[1])
    if not gammas or any(not g > 0 for g in gammas):
        raise CausalZooError(f"gammas={gammas!r} must be a non-empty tuple of numbers > 0.")
    check_int("n_folds", n_folds, 2)
    check_int("max_train", max_train, 2 * n_folds, meaning="two rows per fold")
    train, test = _split(zt.shape[0], test_fraction, seed)
    train = train[:max_train]  # already a random order
    if train.size < 2 * n_folds:
        raise CausalZooError(
            f"{train.size} train samples cannot be split into n_folds={n_folds} folds; "
            "pass more samples or fewer folds."
        )

    def standardise(a: np.ndarray) -> np.ndarray:
        mu, sd = a[train].mean(axis=0), a[train].std(axis=0)
        return (a - mu) / np.where(sd > 0, sd, 1.0)

    x, y = standardise(zh), standardise(zt)
    with _single_threaded_blas():
        return _summarise(_krr_select_and_score(x, y, train, test, gammas, alphas, n_folds),
                          per_dimension)


@contextmanager
def _single_threaded_blas():
    """Many small factorisations run fastest on one BLAS thread; on a busy machine
    OpenBLAS's threads make a 300 x 300 Cholesky up to 100x slower. threadpoolctl comes
    with scanpy (through scikit-learn); without it nothing changes."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _krr_select_and_score(x, y, train, test, gammas, alphas, n_folds) -> np.ndarray:
    alpha_arr = np.asarray(alphas, dtype=np.float64)
    folds = np.array_split(train, n_folds)
    cv = np.zeros((len(gammas), alpha_arr.size))
    for k, fold in enumerate(folds):
        rest = np.concatenate([f for j, f in enumerate(folds) if j != k])
        for g, gamma in enumerate(gammas):
            preds = _krr_fit_predict(x[rest], y[rest], x[fold], float(gamma), alpha_arr)
            cv[g] += [_r2_scores(y[fold], p).mean() for p in preds]
    g_best, a_best = np.unravel_index(np.argmax(cv), cv.shape)
    pred = _krr_fit_predict(x[train], y[train], x[test], float(gammas[g_best]),
                            alpha_arr[[a_best]])[0]
    return _r2_scores(y[test], pred)
