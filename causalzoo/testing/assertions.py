"""Assertions for identifiability tests: a score is only meaningful beside its floor.

A random rotation of the true latents already scores MCC ≈ 0.74 at d = 5, and the raw
observations often score 0.6-0.7, so an absolute threshold says little. The assertions here
compute the entangled floor of the same data (:func:`causalzoo.identifiability.entangled_floor`)
and compare the score to ``floor + margin``, with every number in the failure message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .._errors import CausalZooError
from ..identifiability.graphs import graph_metrics
from ..identifiability.metrics import correlation_matrix, entangled_floor, mcc

__all__ = ["RecoveryReport", "recovery_report", "assert_recovers", "assert_does_not_recover"]

Floor = Literal["max", "rotation", "observations"]


@dataclass(frozen=True)
class RecoveryReport:
    """A recovery score beside its floor.

    Attributes
    ----------
    score : float
        MCC of the estimate.
    metric : str
        ``"spearman"`` or ``"pearson"``.
    floor : float
        The floor compared against (see ``floor_kind``).
    floor_kind : str
        ``"max"`` (the larger of the two floors below), ``"rotation"`` or ``"observations"``.
    floors : dict
        ``"rotation"`` (mean MCC of random rotations of the truth), ``"rotation_max"``, and
        ``"observations"`` (MCC of the raw observations) when the data have ``x``.
    matched : numpy.ndarray
        Per true dimension, the absolute correlation with its matched estimated dimension.
    matching : numpy.ndarray
        The estimated column matched to each true dimension.
    graph : dict or None
        The estimated graph scored against the true one after the latents' matching
        (:func:`causalzoo.identifiability.graphs.graph_metrics`): ``"shd"``,
        ``"precision"``, ``"recall"``, ``"n_true_edges"``, ``"n_predicted_edges"``, and the
        SHDs of the two trivial answers, ``"shd_empty"`` (no edge: the number of true
        edges) and ``"shd_full"`` (every edge: the number of absent ones). None when there
        is no graph to score.
    """

    score: float
    metric: str
    floor: float
    floor_kind: str
    floors: dict[str, float]
    matched: np.ndarray
    matching: np.ndarray
    graph: dict[str, float] | None = None

    @property
    def graph_beats_trivial(self) -> bool:
        """Whether the graph's SHD is below both trivial graphs' (empty and full).

        Raises
        ------
        CausalZooError
            When the report has no graph.
        """
        if self.graph is None:
            raise CausalZooError(
                "This report scored no graph: pass graph= to recovery_report, or a fitted "
                "model with lag_graph() and data with a `graph` attribute."
            )
        return self.graph["shd"] < min(self.graph["shd_empty"], self.graph["shd_full"])

    def describe(self, margin: float | None = None) -> str:
        """One readable line: score, floor and its parts, margin, per-dimension scores."""
        parts = ", ".join(f"{k} {v:.3f}" for k, v in self.floors.items())
        margin_text = ("" if margin is None
                       else f" + margin {margin:.3f} = {self.floor + margin:.3f}")
        graph_text = "" if self.graph is None else (
            f"; graph SHD {self.graph['shd']:.0f} (empty graph {self.graph['shd_empty']:.0f}, "
            f"full graph {self.graph['shd_full']:.0f}), precision "
            f"{self.graph['precision']:.2f}, recall {self.graph['recall']:.2f}"
        )
        return (
            f"{self.metric} MCC {self.score:.3f}; entangled floor ({self.floor_kind}) "
            f"{self.floor:.3f}{margin_text} [{parts}]; matched correlations per true "
            f"dimension {np.round(self.matched, 3).tolist()} (estimated columns "
            f"{self.matching.tolist()}){graph_text}"
        )


def _z_hat(fit_or_z_hat: Any) -> np.ndarray:
    if hasattr(fit_or_z_hat, "get_latent_representation"):
        return np.asarray(fit_or_z_hat.get_latent_representation())
    return np.asarray(fit_or_z_hat)


def _truth(data: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if hasattr(data, "z"):
        x = getattr(data, "x", None)
        return np.asarray(data.z), None if x is None else np.asarray(x)
    return np.asarray(data), None


def _graph_score(
    fit_or_z_hat: Any, data: Any, graph: Any, threshold: float, matching: np.ndarray
) -> dict[str, float] | None:
    true_graph = getattr(data, "graph", None)
    if graph is None:
        if true_graph is None or not hasattr(fit_or_z_hat, "lag_graph"):
            return None
        graph = fit_or_z_hat.lag_graph()
        if np.shape(graph)[:-2] != np.shape(true_graph)[:-2]:
            return None  # a fit with another number of lags: no edge-by-edge comparison
    elif true_graph is None:
        raise CausalZooError(
            "graph= was given but the data have no true graph to score it against: pass "
            "a generator's output (it has a `graph` attribute)."
        )
    scores = graph_metrics(true_graph, graph, matching, threshold=threshold)
    n_true = scores["n_true_edges"]
    return {**scores, "shd_empty": n_true, "shd_full": float(np.size(true_graph)) - n_true}


def recovery_report(
    fit_or_z_hat: Any,
    data: Any,
    *,
    metric: str = "spearman",
    floor: Floor = "max",
    n_rotations: int = 20,
    seed: int = 0,
    graph: Any = None,
    graph_threshold: float = 0.5,
) -> RecoveryReport:
    """Score an estimate against the truth and its entangled floor, without asserting.

    Parameters
    ----------
    fit_or_z_hat : array_like or fitted model
        The estimated latents ``(n, d_hat)``, or any object with a
        ``get_latent_representation()`` method (a fitted ``cz.IVAE``, ...). Temporal
        latents ``(units, steps, d_hat)`` (a fitted ``cz.DynamicalCausalVAE``) are scored
        with every step of every unit as a point, against truth of the same leading shape.
    data : generator output or array_like
        An object with ``z`` (true latents) and optionally ``x`` (observations), such as
        the output of a ``cz.identifiability.generators`` function, or the true latents.
    metric : {"spearman", "pearson"}
        Spearman for the permutation + component-wise class, Pearson for affine classes.
    floor : {"max", "rotation", "observations"}
        ``"rotation"``: mean MCC of random rotations of the true latents; ``"observations"``:
        MCC of the raw observations (needs ``data.x``); ``"max"``: the larger of the two
        (rotation only when there is no ``x``).
    n_rotations, seed : int
        Rotations drawn for the floor, and their seed.
    graph : array_like, optional
        An estimated graph (weights or edge probabilities) to score against ``data.graph``
        after matching the latents. By default the lag graph of a fitted model that has
        ``lag_graph()`` (``cz.DynamicalCausalVAE``) is scored when the data have a graph.
    graph_threshold : float
        Entries with absolute value above it are edges (0.5: edge probability).

    Returns
    -------
    RecoveryReport
    """
    if floor not in ("max", "rotation", "observations"):
        raise CausalZooError(
            f"floor={floor!r} is unknown; use 'max', 'rotation' or 'observations'."
        )
    z_true, x = _truth(data)
    z_hat = _z_hat(fit_or_z_hat)
    if z_true.ndim > 2:
        # temporal latents (units, steps, d): every step of every unit is a point
        if z_hat.shape[:-1] != z_true.shape[:-1]:
            raise CausalZooError(
                f"The estimate has shape {z_hat.shape} but the true latents {z_true.shape}: "
                "they must agree in every axis but the last."
            )
        z_true, z_hat = z_true.reshape(-1, z_true.shape[-1]), z_hat.reshape(-1, z_hat.shape[-1])
        x = None if x is None else x.reshape(-1, x.shape[-1])
    score, matching = mcc(z_true, z_hat, method=metric, return_matching=True)
    floors = entangled_floor(z_true, n_rotations=n_rotations, seed=seed, x=x, method=metric)
    if floor == "observations" and "observations" not in floors:
        raise CausalZooError(
            "floor='observations' needs the observations: pass data with an `x` attribute "
            "(a generator's output), or use floor='rotation'."
        )
    value = floors["rotation"] if floor == "rotation" else (
        floors["observations"] if floor == "observations"
        else max(floors["rotation"], floors.get("observations", -np.inf))
    )
    c = correlation_matrix(z_true, z_hat, method=metric)
    matched = c[np.arange(z_true.shape[1]), matching]
    return RecoveryReport(
        score=float(score), metric=metric, floor=float(value), floor_kind=floor,
        floors={k: float(v) for k, v in floors.items()}, matched=matched, matching=matching,
        graph=_graph_score(fit_or_z_hat, data, graph, graph_threshold, matching),
    )


def _check_margin(margin: float) -> float:
    try:
        margin = float(margin)
    except (TypeError, ValueError):
        raise CausalZooError(f"margin={margin!r} must be a number.") from None
    if not np.isfinite(margin):
        raise CausalZooError(f"margin={margin!r} must be finite.")
    return margin


def assert_recovers(
    fit_or_z_hat: Any,
    data: Any,
    *,
    metric: str = "spearman",
    margin: float = 0.1,
    min_score: float | None = None,
    floor: Floor = "max",
    n_rotations: int = 20,
    seed: int = 0,
) -> RecoveryReport:
    """Assert that an estimate recovers the true latents clearly above the entangled floor.

    Passes when ``score > floor + margin`` (and ``score >= min_score`` if given); otherwise
    raises an ``AssertionError`` whose message gives the score, the floor and its parts, the
    margin and the per-dimension matched correlations.

    Parameters
    ----------
    fit_or_z_hat, data, metric, floor, n_rotations, seed
        As in :func:`recovery_report`.
    margin : float
        How far above the floor the score must be.
    min_score : float, optional
        An absolute lower bound as well (e.g. a published number minus a tolerance).

    Returns
    -------
    RecoveryReport
        For logging the numbers of a passing test.

    Examples
    --------
    >>> import causalzoo as cz
    >>> data = cz.identifiability.generators.ivae(n_segments=5, n_per_segment=100,
    ...                                           n_latent=3, seed=0)
    >>> report = assert_recovers(np.exp(data.z[:, ::-1]), data, margin=0.1)
    >>> round(report.score, 6)
    1.0
    """
    margin = _check_margin(margin)
    report = recovery_report(
        fit_or_z_hat, data, metric=metric, floor=floor, n_rotations=n_rotations, seed=seed
    )
    if not report.score > report.floor + margin:
        raise AssertionError(
            "The latents are not recovered above the entangled floor: " + report.describe(margin)
        )
    if min_score is not None and not report.score >= min_score:
        raise AssertionError(
            f"The latents are recovered above the floor but below min_score={min_score:.3f}: "
            + report.describe(margin)
        )
    return report


def assert_does_not_recover(
    fit_or_z_hat: Any,
    data: Any,
    *,
    metric: str = "spearman",
    margin: float = 0.1,
    floor: Floor = "max",
    n_rotations: int = 20,
    seed: int = 0,
) -> RecoveryReport:
    """Assert a negative control: the score stays at or below ``floor + margin``.

    For a model fitted without what identifiability needs (shuffled auxiliary variables, a
    stationary prior), recovery must fail; a score above the floor would mean the test
    cannot tell identified from entangled representations.

    Parameters
    ----------
    fit_or_z_hat, data, metric, floor, n_rotations, seed
        As in :func:`recovery_report`.
    margin : float
        Tolerance above the floor.

    Returns
    -------
    RecoveryReport
    """
    margin = _check_margin(margin)
    report = recovery_report(
        fit_or_z_hat, data, metric=metric, floor=floor, n_rotations=n_rotations, seed=seed
    )
    if report.score > report.floor + margin:
        raise AssertionError(
            "The negative control recovers the latents above the entangled floor (it should "
            "not): " + report.describe(margin)
        )
    return report
