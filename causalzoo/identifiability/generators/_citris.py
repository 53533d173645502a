"""CITRIS-style temporal causal latents with interventions, rendered by a random MLP."""

from __future__ import annotations

import numpy as np

from ..._errors import CausalZooError
from ._checks import check_float as _check_float
from ._checks import check_int as _check_int
from ._temporal import TemporalData, apply_mlp, invertible_mlp

__all__ = ["citris_temporal"]


def _random_dag_over_time(rng: np.random.Generator, d: int, n_parents: int) -> np.ndarray:
    """Lag-1 parents: each variable gets ``min(n_parents, d - 1)`` other variables."""
    graph = np.zeros((d, d), dtype=bool)
    for child in range(d):
        others = np.delete(np.arange(d), child)
        k = min(n_parents, d - 1)
        graph[rng.choice(others, size=k, replace=False), child] = True
    return graph


def citris_temporal(
    *,
    n_units: int = 200,
    n_steps: int = 20,
    n_latent: int = 6,
    n_features: int = 12,
    n_parents: int = 2,
    intervention_prob: float | None = None,
    noise_scale: float = 0.1,
    n_mixing_layers: int = 3,
    seed: int = 0,
) -> TemporalData:
    """Temporal causal latents with observed single-variable interventions (CITRIS).

    A re-implementation of the latent dynamics of Temporal-Causal3DIdent (Lippe et al.
    2022) without the Blender rendering: the images are replaced by a random invertible
    MLP followed by an injective linear lift to ``n_features``.

    Generative story (``d = n_latent``):

    1. a lag-1 causal graph: each variable has ``n_parents`` parents among the others at the
       previous step; weights ``a_ji ~ ±U(0.5, 1.5)`` and offsets ``c_i ~ U(-0.5, 0.5)``;
    2. ``z_0 ~ U(-1, 1)^d``;
    3. each step relaxes every variable half-way towards a goal set by its parents,
       ``z_{t,i} = z_{t-1,i} + (goal_i - z_{t-1,i}) / 2 + N(0, noise_scale^2)`` with
       ``goal_i = tanh(sum_j a_ji z_{t-1,j} + c_i)``;
    4. interventions: at every step each variable is intervened on independently with
       probability ``intervention_prob`` (default ``1 / (d + 1)``); an intervened variable
       is replaced by a fresh ``U(-1, 1)`` draw. The targets are observed: ``u[n, t, i] = 1``;
    5. ``x_t = MLP(z_t) @ lift``: the invertible leaky-ReLU MLP of
       :func:`leap_nonstationary` on ``R^d``, then a ``(d, n_features)`` matrix of full row
       rank (condition number below 10), so the mixing is injective.

    Assumptions it satisfies (CITRIS): known intervention targets, every variable
    intervened on with positive probability, interventions independent across variables,
    no instantaneous effects, an injective observation map. Identifiable: each causal
    variable up to a component-wise invertible map (scalar variables here). The ``u``
    sequence together with ``graph`` gives the ground truth for intervention-aware models.

    Parameters
    ----------
    n_units : int
        Independent sequences (CITRIS uses one long sequence of 10^4 steps).
    n_steps : int
    n_latent : int
    n_features : int
        Observation dimension (>= ``n_latent``).
    n_parents : int
        Lag-1 parents per variable (excluding itself).
    intervention_prob : float in [0, 1], optional
    noise_scale : float > 0
    n_mixing_layers : int
    seed : int

    Returns
    -------
    TemporalData
        ``u`` are the intervention targets ``(n_units, n_steps, d)`` (no intervention at
        step 0); ``transition[0, 0]`` the weights ``a``; ``info`` holds ``offset`` ``c`` and
        ``lift``.

    Examples
    --------
    >>> data = citris_temporal(n_units=4, n_steps=5, seed=0)
    >>> data.x.shape, data.u.shape, data.graph.shape
    ((4, 5, 12), (4, 5, 6), (1, 6, 6))
    """
    n = _check_int("n_units", n_units, 1)
    steps = _check_int("n_steps", n_steps, 2)
    d = _check_int("n_latent", n_latent, 1)
    p = _check_int("n_features", n_features, 1)
    if p < d:
        raise CausalZooError(
            f"n_features={p} is smaller than n_latent={d}; an injective rendering needs "
            "n_features >= n_latent (use caring for a non-invertible map)."
        )
    k = _check_int("n_parents", n_parents, 0)
    prob = 1.0 / (d + 1) if intervention_prob is None else _check_float(
        "intervention_prob", intervention_prob, 0.0, 1.0)
    noise = _check_float("noise_scale", noise_scale, 0.0, low_open=True)
    layers = _check_int("n_mixing_layers", n_mixing_layers, 1)
    seed = _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)

    graph = _random_dag_over_time(rng, d, k)
    a = graph * rng.uniform(0.5, 1.5, (d, d)) * rng.choice([-1.0, 1.0], (d, d))
    offset = rng.uniform(-0.5, 0.5, d)
    mixing = invertible_mlp(rng, d, layers)
    while True:  # a well-conditioned lift keeps the rendering numerically injective
        lift = rng.normal(size=(d, p)) / np.sqrt(p)
        sv = np.linalg.svd(lift, compute_uv=False)
        if sv[-1] > 0 and sv[0] / sv[-1] < 10.0:
            break
    z = np.zeros((n, steps, d))
    u = np.zeros((n, steps, d))
    z[:, 0] = rng.uniform(-1.0, 1.0, (n, d))
    for t in range(1, steps):
        prev = z[:, t - 1]
        goal = np.tanh(prev @ a + offset)
        nxt = prev + 0.5 * (goal - prev) + rng.normal(0.0, noise, (n, d))
        hit = rng.random((n, d)) < prob
        z[:, t] = np.where(hit, rng.uniform(-1.0, 1.0, (n, d)), nxt)
        u[:, t] = hit
    x = apply_mlp(z, mixing) @ lift
    graph |= np.eye(d, dtype=bool)
    f32 = np.float32
    return TemporalData(
        x=x.astype(f32), u=u.astype(f32), z=z.astype(f32), graph=graph[None],
        transition=a[None, None].astype(f32), noise_scale=np.full((1, d), noise, dtype=f32),
        n_lags=1, name="citris_temporal", seed=seed, mixing=mixing,
        info={"offset": offset.astype(f32), "lift": lift.astype(f32),
              "intervention_prob": prob},
    )
