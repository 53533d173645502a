"""Counts of the built-in count likelihoods, drawn on the host.

JAX's exact samplers are slow for millions of counts on a CPU: ``jax.random.gamma`` splits
one key per element and runs a rejection loop per element, and ``jax.random.poisson`` runs
both Knuth's loop and a rejection loop over the whole array until its slowest element is
done. On the demo fit (``causalzoo demo``: 2,875 cells x 500 genes, 50 draws) the
replicated counts took about 95% of :func:`~causalzoo.diagnostics.to_datatree`'s time.

For :class:`~causalzoo.blocks.likelihoods.NegativeBinomialLog`,
:class:`~causalzoo.blocks.likelihoods.ZeroInflatedNegativeBinomialLog` and
:class:`~causalzoo.blocks.likelihoods.PoissonLog` a compiled program therefore returns the
distribution's parameters (:func:`device_params`), and NumPy's exact samplers (the same
Gamma-Poisson mixture, in float64) draw the counts on the host: :func:`draw_into` for
``to_datatree``'s posterior predictive (one stream per posterior draw), :func:`draw_cells`
for :meth:`~causalzoo.SparsePerturbationVAE.predict` (one stream per block of cells). Every
other observation distribution (Gaussian, a user's own) is sampled by its own ``sample`` on
the device.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpyro.distributions as dist
from scipy.special import expit

__all__: list[str] = []

# Keys of the parameter dict, prefixed by the family, so the host knows what it holds.
_NB = ("nb_log_mean", "nb_log_concentration")
_ZINB_GATE = "zinb_gate_logits"
_POISSON = "poisson_log_rate"


def device_params(fn) -> dict | None:
    """The arrays the host needs to sample ``fn`` (inside the traced program), or ``None``
    when ``fn`` is not one of the built-in count distributions (sample it on the device).

    The exact classes only: a subclass may override ``sample``.
    """
    from .likelihoods import (
        NegativeBinomialLog,
        PoissonLog,
        ZeroInflatedNegativeBinomialLog,
    )

    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    kind = type(fn)
    if kind is NegativeBinomialLog or kind is ZeroInflatedNegativeBinomialLog:
        # gene-wise concentrations stay gene-wise: the host broadcasts them per draw
        log_mean, log_concentration = fn._nb_args()
        out = {_NB[0]: log_mean, _NB[1]: log_concentration}
        if kind is ZeroInflatedNegativeBinomialLog:
            out[_ZINB_GATE] = fn.gate_logits
        return out
    if kind is PoissonLog:
        return {_POISSON: fn.log_rate}
    return None


def _nb(rng, log_mean, log_concentration):
    """Gamma-Poisson: ``lambda ~ Gamma(theta, rate=theta/mu)``, ``x ~ Poisson(lambda)``."""
    theta = np.exp(log_concentration)
    scale = np.exp(log_mean - log_concentration)  # mu / theta without overflow
    bad = ~(np.isfinite(theta) & np.isfinite(scale))
    if bad.any():
        theta, scale = np.where(bad, 1.0, theta), np.where(bad, 0.0, scale)
    counts = rng.poisson(rng.standard_gamma(theta) * scale).astype(np.float32)
    if bad.any():
        counts[bad] = np.nan
    return counts


def event_shape(params: dict) -> tuple[int, ...]:
    """Shape of one cell's counts, from one chunk's parameters ``(draws, cells, ...)``."""
    shape = np.broadcast_shapes(*(np.shape(v)[1:] for v in params.values()))
    return tuple(shape[1:])


def _one_draw(params: dict, s: int, rng: np.random.Generator, valid: int, out: np.ndarray):
    p = {k: np.asarray(v[s], np.float64) for k, v in params.items()}
    shape = np.broadcast_shapes(*(v.shape for v in p.values()))
    # cells lead the batch shape; gene-wise arrays broadcast over them
    p = {k: np.broadcast_to(v, shape)[:valid] for k, v in p.items()}
    if _POISSON in p:
        rate = np.exp(p[_POISSON])
        bad = ~np.isfinite(rate)
        counts = rng.poisson(np.where(bad, 0.0, rate)).astype(np.float32)
        counts[bad] = np.nan
    else:
        counts = _nb(rng, p[_NB[0]], p[_NB[1]])
        if _ZINB_GATE in p:
            counts[rng.random(counts.shape) < expit(p[_ZINB_GATE])] = 0.0
    out[s] = counts


def draw_into(params: dict, seed_bits, valid: int, out: np.ndarray, pool=None) -> None:
    """Write one chunk's counts into ``out`` (``(draws, valid, ...)``), from its parameters
    (leading dims ``(draws, cells, ...)``; padded cells past ``valid`` are not sampled).

    Draw ``s`` uses its own NumPy stream, child ``s`` of ``SeedSequence(seed_bits)``, so the
    counts do not depend on how the draws are spread over the threads of ``pool``.
    """
    n_draws = next(iter(params.values())).shape[0]
    rngs = [np.random.default_rng(child)
            for child in np.random.SeedSequence(seed_bits).spawn(n_draws)]
    if pool is None:
        for s in range(n_draws):
            _one_draw(params, s, rngs[s], valid, out)
        return
    # NumPy's samplers release the GIL: draws run in parallel
    for future in [pool.submit(_one_draw, params, s, rngs[s], valid, out)
                   for s in range(n_draws)]:
        future.result()


def draw_cells(params: dict, seed_bits, *, block: int = 256, threads: int | None = None
               ) -> np.ndarray:
    """Counts of every cell, from parameters whose leading dim is the cells (``(cells,
    genes)``; the number of cells a multiple of ``block``).

    Each block of ``block`` cells is one draw of :func:`draw_into` (its own NumPy stream), so
    the blocks run on ``threads`` threads (default: up to 4, one per core) and the counts
    depend on the seed and the number of cells only, not on the threads.

    Returns
    -------
    numpy.ndarray
        ``float32`` counts of shape ``(cells, ...)`` (NaN where a parameter is not finite).
    """
    params = {k: np.asarray(v) for k, v in params.items()}
    n = next(iter(params.values())).shape[0]
    if n % block or any(v.shape[0] != n for v in params.values()):
        shapes = {k: v.shape for k, v in params.items()}
        raise ValueError(f"draw_cells needs arrays of the same multiple of {block} cells; "
                         f"got {shapes}.")
    n_blocks = n // block
    blocks = {k: v.reshape(n_blocks, block, *v.shape[1:]) for k, v in params.items()}
    out = np.empty((n_blocks, block, *event_shape(blocks)), np.float32)
    threads = min(4, os.cpu_count() or 1) if threads is None else threads
    if threads > 1 and n_blocks > 1:
        with ThreadPoolExecutor(min(threads, n_blocks)) as pool:
            draw_into(blocks, seed_bits, block, out, pool)
    else:
        draw_into(blocks, seed_bits, block, out)
    return out.reshape(n, *out.shape[2:])
