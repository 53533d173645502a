"""CaRiNG's non-invertible temporal process: fewer observations than latents."""

from __future__ import annotations

import numpy as np

from ..._errors import CausalZooError
from ._checks import check_float as _check_float
from ._checks import check_int as _check_int
from ._temporal import TemporalData, apply_mlp, domain_noise_scales, invertible_mlp

__all__ = ["caring"]


def caring(
    *,
    n_units: int = 2000,
    n_steps: int = 10,
    n_latent: int = 3,
    n_observed: int = 2,
    weight: float = 0.99,
    noise_scale: float = 0.1,
    noise_coupled: bool = True,
    n_domains: int = 1,
    n_mixing_layers: int = 2,
    seed: int = 0,
) -> TemporalData:
    """CaRiNG's NG process: a cyclic latent transition seen through a non-invertible map.

    Generative story (``d = n_latent``, ``p = n_observed < d``):

    1. ``z_0 ~ N(0, I)``;
    2. cyclic linear transition ``z_{t,i} = weight * z_{t-1,i-1} + eps_{t,i}`` (indices
       mod ``d``: dimension ``i`` inherits from ``i - 1``);
    3. noise ``eps_{t,i} ~ N(0, noise_scale^2)``, multiplied, when ``noise_coupled``, by
       the same dimension's previous value ``z_{t-1,i}`` (CaRiNG's NG setting, whose noise
       is scaled by the mean over its one-step history window; this makes the transition
       non-additive); with ``n_domains > 1`` the units are split into equal domains and
       latent ``i``'s noise scale in domain ``u`` is ``noise_scale * m[u, i]``,
       ``m ~ U(0, 1)`` (LEAP's non-stationary noise, :func:`leap_nonstationary`);
    4. ``x_t = MLP(z_{t,1..p})``: only the first ``p`` latents are mixed (an invertible
       leaky-ReLU MLP on ``R^p``), so ``z_t -> x_t`` is **not** injective.

    Assumption it satisfies (CaRiNG, Chen et al. 2024): the latents are a function of a
    window of observations, ``z_t = m(x_t, x_{t-1}, ...)``: the unmixed ``z_{t,i}`` with
    ``i >= p`` equals ``(z_{t+1,i+1} - eps) / weight``, which later observations reveal
    (and ``weight * z_{t-1,i-1}`` up to noise from earlier ones). Identifiable up to
    permutation and component-wise invertible maps by a model that reads a window of
    observations; a model that encodes ``x_t`` alone cannot recover ``z_{t,p..d-1}``. The
    published setting is ``d = 3``, ``p = 2``, 10 steps, 40000 sequences (CaRiNG MCC 0.93,
    TDRL 0.63).

    Parameters
    ----------
    n_units : int
        Number of sequences.
    n_steps : int
        Steps per sequence, ``z_0`` included.
    n_latent : int
    n_observed : int
        ``p``, the observation dimension (``1 <= p < n_latent``).
    weight : float in (0, 1]
    noise_scale : float > 0
    noise_coupled : bool
    n_domains : int
        Domains whose noise scales differ (above); ``n_units`` must be a multiple of it.
        CaRiNG's own process has one. The modulation ``m`` comes from its own random
        stream, so mixing, initial state and raw noise draws are those of the one-domain
        draw with the same seed. Measured in ``docs/models/dynamical_measurements.md``,
        "CaRiNG with changing noise".
    n_mixing_layers : int
    seed : int

    Returns
    -------
    TemporalData
        ``u`` is each unit's domain (all 0 with one domain), ``noise_scale[u]`` the
        domain's noise scales; ``graph`` is the cyclic lag-1 graph of ``transition``,
        plus each variable's self-edge when ``noise_coupled`` (its noise scale is its own
        previous value, so ``z_{t-1,i}`` is a parent of ``z_{t,i}``); ``info["n_mixed"] =
        p``.

    Examples
    --------
    >>> data = caring(n_units=20, seed=0)
    >>> data.x.shape, data.z.shape
    ((20, 10, 2), (20, 10, 3))
    """
    n = _check_int("n_units", n_units, 1)
    steps = _check_int("n_steps", n_steps, 2)
    d = _check_int("n_latent", n_latent, 2)
    p = _check_int("n_observed", n_observed, 1)
    if p >= d:
        raise CausalZooError(
            f"n_observed={p} must be smaller than n_latent={d}: CaRiNG's setting is a "
            "non-invertible observation map; use leap_nonstationary for an invertible one."
        )
    w = _check_float("weight", weight, 0.0, 1.0, low_open=True)
    noise = _check_float("noise_scale", noise_scale, 0.0, low_open=True)
    n_dom = _check_int("n_domains", n_domains, 1)
    if n % n_dom:
        raise CausalZooError(
            f"n_units={n} is not a multiple of n_domains={n_dom}: each domain gets "
            "n_units / n_domains units; change one of them."
        )
    layers = _check_int("n_mixing_layers", n_mixing_layers, 1)
    seed = _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    sigma = domain_noise_scales(seed, n_dom, d, noise, vary=n_dom > 1)
    u = np.repeat(np.arange(n_dom), n // n_dom)

    trans = np.zeros((1, d, d))
    trans[0, np.arange(d) - 1, np.arange(d)] = w  # parent i-1 -> child i
    mixing = invertible_mlp(rng, p, layers)
    z = np.zeros((n, steps, d))
    z[:, 0] = rng.normal(size=(n, d))
    for t in range(1, steps):
        eps = rng.normal(0.0, 1.0, size=(n, d)) * sigma[u]
        if noise_coupled:
            eps *= z[:, t - 1]
        z[:, t] = z[:, t - 1] @ trans[0] + eps
    x = apply_mlp(z[..., :p], mixing)
    graph = trans != 0
    if noise_coupled:
        # z_{t,i}'s noise scale is |z_{t-1,i}|: its own past is a parent too
        graph[0, np.arange(d), np.arange(d)] = True
    f32 = np.float32
    return TemporalData(
        x=x.astype(f32), u=u.astype(np.int64), z=z.astype(f32), graph=graph,
        transition=np.repeat(trans[None], n_dom, axis=0).astype(f32),
        noise_scale=sigma.astype(f32),
        n_lags=1, name="caring", seed=seed, mixing=mixing, info={"n_mixed": p},
    )
