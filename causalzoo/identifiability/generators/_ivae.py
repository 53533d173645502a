"""The iVAE generator: segment-wise Gaussian sources through a well-conditioned nonlinear mixing.

Generative story (Khemakhem et al. 2020, the synthetic experiment of ``ilkhem/iVAE``)::

    for each segment m = 1..M:                       # the auxiliary variable u = one-hot(m)
        mu_m     ~ Uniform(-mean_range, mean_range)^d
        sigma_m  ~ Uniform(scale_range)^d
        for each of the n_per_segment points:
            z    ~ Normal(mu_m, diag sigma_m^2)      # independent given the segment
            x    = f(z) + noise_scale * eps          # eps ~ Normal(0, I)

The mixing ``f`` alternates matrices and a strictly monotone activation:
``h_1 = act(z A_1)``, ..., ``x = h_{L-1} A_L`` (one layer: ``x = z A_1``, linear). Each
matrix has entries ``Uniform(-1, 1)`` and unit-norm columns, and is redrawn until its
condition number is below the 25th percentile of the condition numbers of ``n_condition``
such draws, as the reference does: ill-conditioned layers would make ``f`` nearly
non-injective and the problem ill-posed. With ``n_observed >= n_latent`` and full-rank
matrices, ``f`` is injective.

Assumptions behind iVAE's identifiability claim that this generator satisfies by
construction: conditionally independent sources given ``u``; sufficient variability (with
``M >= 2 d + 1`` segments of distinct random means and variances the natural-parameter
differences span ``R^{2d}`` almost surely); an injective, smooth mixing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..._errors import CausalZooError
from ._checks import check_float as _check_float
from ._checks import check_int as _check_int

__all__ = ["IVAEData", "ivae", "ivae_mixing"]

_ACTIVATIONS = ("xtanh", "leaky_relu")


@dataclass(frozen=True, eq=False)
class IVAEData:
    """Ground truth and observations from :func:`ivae`.

    Attributes
    ----------
    x : numpy.ndarray, (n, n_observed) float32
        Observations ``f(z) + noise``.
    u : numpy.ndarray, (n, n_segments) float32
        The auxiliary variable: one-hot segment membership.
    z : numpy.ndarray, (n, n_latent) float32
        True sources.
    segment : numpy.ndarray, (n,) int64
        Segment index of each point (``u.argmax(1)``).
    means, scales : numpy.ndarray, (n_segments, n_latent) float32
        Per-segment source means and standard deviations.
    mixing : tuple of numpy.ndarray
        The mixing matrices ``A_1, ..., A_L`` (float64).
    activation : str
        ``"xtanh"`` (``tanh(h) + slope * h``) or ``"leaky_relu"``.
    slope : float
        Slope of the activation's linear part.
    noise_scale : float
        Standard deviation of the additive observation noise.
    seed : int
    """

    x: np.ndarray
    u: np.ndarray
    z: np.ndarray
    segment: np.ndarray
    means: np.ndarray
    scales: np.ndarray
    mixing: tuple[np.ndarray, ...] = field(repr=False)
    activation: str
    slope: float
    noise_scale: float
    seed: int

    def mix(self, z: np.ndarray) -> np.ndarray:
        """Apply the noise-free mixing ``f`` to sources ``z`` of shape ``(n, n_latent)``."""
        return _apply_mixing(np.asarray(z, np.float64), self.mixing, self.activation, self.slope)


def _activation(h: np.ndarray, name: str, slope: float) -> np.ndarray:
    if name == "xtanh":
        return np.tanh(h) + slope * h
    return np.where(h > 0, h, slope * h)


def _apply_mixing(z, mixing, activation, slope):
    h = z
    for i, a in enumerate(mixing):
        h = h @ a
        if i < len(mixing) - 1:
            h = _activation(h, activation, slope)
    return h


def _condition_numbers(a: np.ndarray) -> np.ndarray:
    s = np.linalg.svd(a, compute_uv=False)
    return s[..., 0] / s[..., -1]


def _uniform_matrix(rng, shape):
    a = rng.uniform(-1.0, 1.0, size=shape)
    return a / np.linalg.norm(a, axis=-2, keepdims=True)


def _well_conditioned(rng, n_in: int, n_out: int, n_condition: int) -> np.ndarray:
    threshold = np.percentile(
        _condition_numbers(_uniform_matrix(rng, (n_condition, n_in, n_out))), 25
    )
    while True:
        a = _uniform_matrix(rng, (n_in, n_out))
        if _condition_numbers(a) <= threshold:  # <=: 1 x k matrices all have cond 1
            return a


def ivae_mixing(
    n_latent: int,
    n_observed: int,
    n_layers: int,
    rng: np.random.Generator,
    n_condition: int = 10_000,
) -> tuple[np.ndarray, ...]:
    """Draw the ``n_layers`` well-conditioned mixing matrices of :func:`ivae`.

    The first is ``(n_latent, n_observed)``, the others ``(n_observed, n_observed)``.
    """
    shapes = [(n_latent, n_observed)] + [(n_observed, n_observed)] * (n_layers - 1)
    return tuple(_well_conditioned(rng, a, b, n_condition) for a, b in shapes)


def ivae(
    n_segments: int = 20,
    n_per_segment: int = 500,
    n_latent: int = 5,
    n_observed: int | None = None,
    n_layers: int = 3,
    *,
    activation: str = "xtanh",
    slope: float = 0.1,
    mean_range: float = 2.0,
    scale_range: tuple[float, float] = (0.5, 3.0),
    noise_scale: float = 0.0,
    n_condition: int = 10_000,
    seed: int = 0,
) -> IVAEData:
    """Segment-wise nonstationary Gaussian sources mixed by a random injective MLP.

    See the module docstring for the generative story and its assumptions.

    Parameters
    ----------
    n_segments : int
        Number of segments ``M`` (values of the auxiliary variable); at least 1.
        Identifiability needs ``M >= 2 * n_latent + 1`` when the means vary too.
    n_per_segment : int
        Points per segment.
    n_latent : int
        Source dimension ``d``.
    n_observed : int, optional
        Observation dimension (default ``n_latent``); must be ``>= n_latent``, so that the
        mixing is injective.
    n_layers : int
        Mixing matrices; ``n_layers - 1`` activations between them (1 gives a linear mixing).
    activation : {"xtanh", "leaky_relu"}
        The strictly monotone nonlinearity: ``tanh(h) + slope * h`` or
        ``max(h, slope * h)``.
    slope : float
        Slope in ``(0, 1]`` of the activation's linear part.
    mean_range : float
        Segment means are ``Uniform(-mean_range, mean_range)``; 0 gives centred sources
        that differ only in variance (the reference's default).
    scale_range : (float, float)
        Segment standard deviations are ``Uniform(*scale_range)``.
    noise_scale : float
        Standard deviation of Gaussian noise added to the observations.
    n_condition : int
        Draws used to set the condition-number threshold (25th percentile).
    seed : int
        Seed; the same seed gives the same data.

    Returns
    -------
    IVAEData

    Examples
    --------
    >>> data = ivae(n_segments=4, n_per_segment=50, n_latent=2, seed=0)
    >>> data.x.shape, data.u.shape, data.z.shape
    ((200, 2), (200, 4), (200, 2))
    """
    n_segments = _check_int("n_segments", n_segments, 1)
    n_per_segment = _check_int("n_per_segment", n_per_segment, 1)
    n_latent = _check_int("n_latent", n_latent, 1)
    n_observed = n_latent if n_observed is None else _check_int("n_observed", n_observed, 1)
    if n_observed < n_latent:
        raise CausalZooError(
            f"n_observed={n_observed} is smaller than n_latent={n_latent}: the mixing would "
            "not be injective and the sources not identifiable. Pass n_observed >= n_latent."
        )
    n_layers = _check_int("n_layers", n_layers, 1)
    if activation not in _ACTIVATIONS:
        raise CausalZooError(
            f"activation={activation!r} is unknown; use one of {list(_ACTIVATIONS)}."
        )
    slope = _check_float("slope", slope, 0.0, 1.0, low_open=True)
    mean_range = _check_float("mean_range", mean_range, 0.0)
    noise_scale = _check_float("noise_scale", noise_scale, 0.0)
    n_condition = _check_int("n_condition", n_condition, 1)
    try:
        low, high = (float(v) for v in scale_range)
    except (TypeError, ValueError):
        raise CausalZooError(
            f"scale_range={scale_range!r} must be a pair (low, high) of positive numbers."
        ) from None
    if not (0 < low <= high < np.inf):
        raise CausalZooError(
            f"scale_range={scale_range!r} must satisfy 0 < low <= high (standard deviations)."
        )
    seed = _check_int("seed", seed, 0)

    rng = np.random.default_rng(seed)
    means = rng.uniform(-mean_range, mean_range, size=(n_segments, n_latent))
    scales = rng.uniform(low, high, size=(n_segments, n_latent))
    segment = np.repeat(np.arange(n_segments), n_per_segment)
    z = means[segment] + scales[segment] * rng.standard_normal((segment.size, n_latent))
    mixing = ivae_mixing(n_latent, n_observed, n_layers, rng, n_condition)
    x = _apply_mixing(z, mixing, activation, slope)
    if noise_scale > 0:
        x = x + noise_scale * rng.standard_normal(x.shape)
    return IVAEData(
        x=x.astype(np.float32),
        u=np.eye(n_segments, dtype=np.float32)[segment],
        z=z.astype(np.float32),
        segment=segment.astype(np.int64),
        means=means.astype(np.float32),
        scales=scales.astype(np.float32),
        mixing=mixing,
        activation=activation,
        slope=slope,
        noise_scale=noise_scale,
        seed=seed,
    )
