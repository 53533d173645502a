"""Baselines every perturbation-prediction model must be compared with.

All baselines work on per-condition mean profiles in whatever space they are given
(callers use log-normalised means): no change (control), the mean of the perturbed
training conditions (GEARS issue #82), and the additive model for combinations
(Ahlmann-Eltze, Huber & Anders 2025), which deep models often fail to beat. For covariate
transfer, :func:`latent_arithmetic_baseline` is scGen's latent arithmetic in a fixed linear
latent space (a PCA), cell by cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from .._errors import CausalZooError

__all__ = [
    "condition_means",
    "additive_baseline",
    "no_change_baseline",
    "train_mean_baseline",
    "latent_arithmetic_baseline",
]


def condition_means(lognorm: object, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Mean profile of every condition.

    Parameters
    ----------
    lognorm : array_like or scipy.sparse matrix, shape (n_cells, n_genes)
        Expression (usually log-normalised).
    labels : sequence of str, length n_cells
        Condition of each cell.

    Returns
    -------
    dict
        Condition -> mean profile (float64, shape (n_genes,)), in order of first
        appearance.

    Examples
    --------
    >>> condition_means(np.array([[0.0], [2.0], [5.0]]), ["c", "c", "A"])
    {'c': array([1.]), 'A': array([5.])}
    """
    if sp.issparse(lognorm):
        x = sp.csr_matrix(lognorm)
    else:
        x = np.asarray(lognorm, dtype=np.float64)
    if x.ndim != 2:
        raise CausalZooError(f"lognorm must be 2-D (cells x genes), got shape {x.shape}.")
    lab = np.asarray(labels).astype(str).reshape(-1)
    if lab.shape[0] != x.shape[0]:
        raise CausalZooError(
            f"labels has {lab.shape[0]} entries but lognorm has {x.shape[0]} cells; give one "
            "label per cell."
        )
    out: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(lab.tolist()):
        rows = x[lab == name]
        out[name] = np.asarray(rows.mean(axis=0), dtype=np.float64).reshape(-1)
    return out


def _get(means: Mapping[str, np.ndarray], key: str, role: str) -> np.ndarray:
    if key not in means:
        raise CausalZooError(
            f"{role} {key!r} has no mean profile; available conditions: "
            f"{sorted(means)[:30]}. Add it to the training means or drop the condition."
        )
    return np.asarray(means[key], dtype=np.float64)


def additive_baseline(
    means: Mapping[str, np.ndarray],
    control: str,
    combos: Sequence[str],
    sep: str = "+",
) -> dict[str, np.ndarray]:
    """Predict combinations as control plus the sum of the single effects.

    ``pred("A+B") = ctrl + (A - ctrl) + (B - ctrl)``, for any number of parts. Parts
    equal to ``control`` (GEARS-style ``"A+ctrl"``) add nothing.

    Parameters
    ----------
    means : mapping of str to array, shape (n_genes,)
        Mean profile of control and of every single perturbation needed.
    control : str
    combos : sequence of str
        Conditions to predict, e.g. ``["A+B"]``.
    sep : str
        Separator between parts.

    Returns
    -------
    dict
        Combination -> predicted mean profile.

    Examples
    --------
    >>> m = {"c": np.array([1.0]), "A": np.array([2.0]), "B": np.array([4.0])}
    >>> additive_baseline(m, "c", ["A+B"])
    {'A+B': array([5.])}
    """
    ctrl = _get(means, control, "control")
    out: dict[str, np.ndarray] = {}
    for combo in combos:
        parts = [p.strip() for p in str(combo).split(sep)]
        if any(p == "" for p in parts):
            raise CausalZooError(
                f"condition {combo!r} has an empty part when split on {sep!r}; write "
                f"combinations as 'A{sep}B'."
            )
        pred = ctrl.copy()
        for part in parts:
            if part == control:
                continue
            pred += _get(means, part, f"single perturbation (part of {combo!r})") - ctrl
        out[combo] = pred
    return out


def no_change_baseline(
    means: Mapping[str, np.ndarray], control: str, conditions: Sequence[str]
) -> dict[str, np.ndarray]:
    """Predict the control mean for every condition.

    Examples
    --------
    >>> no_change_baseline({"c": np.array([1.0])}, "c", ["A"])
    {'A': array([1.])}
    """
    ctrl = _get(means, control, "control")
    return {c: ctrl.copy() for c in conditions}


def train_mean_baseline(
    means: Mapping[str, np.ndarray],
    control: str,
    train_conditions: Sequence[str],
    conditions: Sequence[str],
) -> dict[str, np.ndarray]:
    """Predict the mean of the perturbed training conditions' means for every condition.

    Control (if listed in ``train_conditions``) is left out of the average.

    Examples
    --------
    >>> m = {"c": np.array([0.0]), "A": np.array([2.0]), "B": np.array([4.0])}
    >>> train_mean_baseline(m, "c", ["c", "A", "B"], ["A+B"])
    {'A+B': array([3.])}
    """
    perturbed = [c for c in dict.fromkeys(train_conditions) if c != control]
    if not perturbed:
        raise CausalZooError(
            f"train_conditions={list(train_conditions)!r} holds no perturbed condition; the "
            "train-mean baseline needs at least one besides control."
        )
    avg = np.mean([_get(means, c, "training condition") for c in perturbed], axis=0)
    return {c: avg.copy() for c in conditions}


def latent_arithmetic_baseline(
    space: object,
    source_cells: object,
    context_pairs: Sequence[tuple[object, object]],
) -> np.ndarray:
    """scGen-style latent arithmetic: shift the source cells by the average perturbation vector.

    ``z_pred = encode(source) + mean_c [mean encode(perturbed_c) - mean encode(control_c)]``,
    decoded back, where ``c`` runs over the training contexts (each context weighs the same,
    like scGen's cell-type balancing). With a PCA as the latent space this needs no fitted
    network and is the transfer baseline a covariate-aware model has to beat.

    Parameters
    ----------
    space : object
        Has ``transform(cells) -> latents`` and ``inverse_transform(latents) -> cells``, e.g.
        :class:`~causalzoo.evaluation.distances.PCASpace`.
    source_cells : array_like, shape (n_cells, n_genes)
        Control cells of the target context (log-normalised).
    context_pairs : sequence of (perturbed_cells, control_cells)
        One pair per training context that has both.

    Returns
    -------
    numpy.ndarray, shape (n_cells, n_genes)
        Predicted cells in gene space.

    Examples
    --------
    >>> class Identity:
    ...     transform = inverse_transform = staticmethod(lambda x: np.asarray(x, float))
    >>> latent_arithmetic_baseline(Identity(), [[1.0], [3.0]], [([[5.0]], [[4.0]])])
    array([[2.],
           [4.]])
    """
    if not context_pairs:
        raise CausalZooError(
            "latent arithmetic needs at least one training context with both perturbed and "
            "control cells."
        )
    deltas = []
    for perturbed, control in context_pairs:
        zp = np.asarray(space.transform(perturbed), dtype=np.float64)  # type: ignore[attr-defined]
        zc = np.asarray(space.transform(control), dtype=np.float64)  # type: ignore[attr-defined]
        deltas.append(zp.mean(axis=0) - zc.mean(axis=0))
    z = np.asarray(space.transform(source_cells), dtype=np.float64)  # type: ignore[attr-defined]
    shifted = z + np.mean(deltas, axis=0)
    return np.asarray(space.inverse_transform(shifted))  # type: ignore[attr-defined]
