"""SHD, precision and recall of latent graphs after permutation alignment.

Also available as ``cz.identifiability.graph_metrics``.
"""

from __future__ import annotations

import numpy as np

from .._errors import CausalZooError

__all__ = ["graph_metrics"]


def _as_graph(name: str, g: object) -> np.ndarray:
    arr = np.asarray(g)
    if arr.ndim not in (2, 3) or arr.shape[-1] != arr.shape[-2]:
        raise CausalZooError(
            f"{name} must be a (d, d) adjacency matrix or a (n_lags, d, d) stack of lag "
            f"matrices, got shape {arr.shape}."
        )
    return arr


def graph_metrics(
    true_graph: object,
    est_graph: object,
    permutation: object | None = None,
    *,
    threshold: float = 0.0,
) -> dict[str, float]:
    """SHD, precision and recall of an estimated graph after permutation alignment.

    ``graph[i, j] != 0`` is an edge ``i -> j``. The estimate is first relabelled onto the
    true latents, ``est[permutation[i], permutation[j]]`` for true nodes ``i, j`` (take
    ``permutation`` from ``mcc(..., return_matching=True)``), and entries with
    ``|weight| > threshold`` are edges. The structural Hamming distance counts missing plus
    extra edges, with a reversed edge counted once (the CITRIS convention; a spurious
    2-cycle where the truth has no edge counts as two extra edges). A stack of lag
    matrices ``(n_lags, d, d)`` (edge ``z_{t-l-1, i} -> z_{t, j}``) is scored entry by
    entry: a lagged edge has a fixed direction in time, so nothing counts as reversed.

    Parameters
    ----------
    true_graph : array_like, shape (d, d) or (n_lags, d, d)
        Ground truth (booleans or weights).
    est_graph : array_like, shape (d_hat, d_hat) or (n_lags, d_hat, d_hat)
        Estimate (booleans, weights or edge probabilities).
    permutation : array_like of int, shape (d,), optional
        Estimated node matched to each true node; identity (requires ``d_hat = d``) if None.
    threshold : float
        Entries with absolute value above it are edges.

    Returns
    -------
    dict
        ``"shd"`` (int-valued float), ``"precision"`` (correct among predicted edges; 1
        when nothing is predicted), ``"recall"`` (found among true edges; 1 when there are
        none), ``"n_reversed"``, ``"n_true_edges"``, ``"n_predicted_edges"``.

    Examples
    --------
    >>> truth = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    >>> est = np.array([[0, 0, 0], [1, 0, 1], [1, 0, 0]])  # 0->1 reversed, 2->0 extra
    >>> graph_metrics(truth, est)["shd"]
    2.0
    """
    a = _as_graph("true_graph", true_graph) != 0
    w = _as_graph("est_graph", est_graph)
    if a.ndim != w.ndim or (a.ndim == 3 and a.shape[0] != w.shape[0]):
        raise CausalZooError(
            f"true_graph has shape {a.shape} but est_graph has shape {w.shape}; both must be "
            "single graphs or stacks of the same number of lags."
        )
    d, d_hat = a.shape[-1], w.shape[-1]
    if permutation is None:
        if d_hat != d:
            raise CausalZooError(
                f"est_graph has {d_hat} nodes but true_graph has {d}; pass permutation "
                "(the matching from mcc(..., return_matching=True))."
            )
        perm = np.arange(d)
    else:
        perm = np.asarray(permutation, dtype=np.int64).reshape(-1)
        if perm.size != d or len(set(perm.tolist())) != d or perm.min() < 0 or perm.max() >= d_hat:
            raise CausalZooError(
                f"permutation={perm.tolist()} must give {d} distinct estimated nodes in "
                f"[0, {d_hat})."
            )
    p = np.abs(w[..., perm[:, None], perm[None, :]].astype(np.float64)) > threshold
    tp = int(np.sum(a & p))
    diff = int(np.sum(a != p))
    n_rev = 0
    if a.ndim == 2:
        rev = a & ~a.T & p.T & ~p  # true i->j, estimated j->i only
        n_rev = int(rev.sum())
    n_true, n_pred = int(a.sum()), int(p.sum())
    return {
        "shd": float(diff - n_rev),
        "precision": tp / n_pred if n_pred else 1.0,
        "recall": tp / n_true if n_true else 1.0,
        "n_reversed": float(n_rev),
        "n_true_edges": float(n_true),
        "n_predicted_edges": float(n_pred),
    }
