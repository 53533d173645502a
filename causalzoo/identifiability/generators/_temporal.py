"""Temporal ground truth: the shared container, the mixing networks, LEAP and TDRL.

Sequences are ``(n_units, n_steps, n_dims)``: unit ``n`` is observed at every step. A lag
graph is a boolean stack ``graph[l, i, j]`` = "``z_{t-l-1, i}`` is a parent of ``z_{t, j}``".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..._errors import CausalZooError, check_bool
from ._checks import check_float as _check_float
from ._checks import check_int as _check_int

__all__ = ["TemporalData", "TemporalSnapshot", "leap_nonstationary", "snapshot",
           "tdrl_changing"]

LEAKY_SLOPE = 0.2


def leaky_relu(a: np.ndarray, slope: float = LEAKY_SLOPE) -> np.ndarray:
    return np.where(a > 0, a, slope * a)


def random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    """A Haar-random orthogonal ``(d, d)`` matrix (QR of a Gaussian, sign-corrected)."""
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def invertible_mlp(rng: np.random.Generator, d: int, n_layers: int) -> list[np.ndarray]:
    """Weights of a bijective ``R^d -> R^d`` leaky-ReLU MLP (orthogonal square layers)."""
    return [random_orthogonal(rng, d) for _ in range(n_layers)]


def apply_mlp(z: np.ndarray, weights: list[np.ndarray], slope: float = LEAKY_SLOPE) -> np.ndarray:
    """``h <- leaky_relu(h) @ A_k`` for every layer (LEAP's mixing recipe).

    With square orthogonal ``A_k`` and ``slope > 0`` every layer is a bijection, so the
    whole map is invertible, with a Jacobian of full rank almost everywhere and condition
    number at most ``slope^-n_layers``.
    """
    h = z
    for a in weights:
        h = leaky_relu(h, slope) @ a
    return h


@dataclass(frozen=True, eq=False)
class TemporalData:
    """Ground truth and observations of a temporal generator.

    Attributes
    ----------
    x : numpy.ndarray, (n_units, n_steps, n_features) float32
        Observations.
    u : numpy.ndarray
        Auxiliary variable: the domain of each unit ``(n_units,)`` int64 for LEAP, TDRL and
        CaRiNG (all 0 for a single domain); the intervention targets
        ``(n_units, n_steps, n_latent)`` float32 (1 = intervened at that step) for CITRIS.
    z : numpy.ndarray, (n_units, n_steps, n_latent) float32
        True latents; the first ``n_lags`` steps are the initial history.
    graph : numpy.ndarray of bool, (n_lags, n_latent, n_latent)
        ``graph[l, i, j]``: ``z_{t-l-1, i} -> z_{t, j}`` (union over domains).
    transition : numpy.ndarray, float32
        Lag weights ``(n_domains, n_lags, n_latent, n_latent)``, row = parent, column = child.
    noise_scale : numpy.ndarray, (n_domains, n_latent) float32
        Standard deviation of the transition noise in each domain.
    n_lags : int
    name : str
        Which generator produced it.
    seed : int
    mixing : list of numpy.ndarray
        Weights of the observation map (see :meth:`observe`).
    info : dict
        Generator-specific extras (documented by each generator).
    """

    x: np.ndarray
    u: np.ndarray
    z: np.ndarray
    graph: np.ndarray
    transition: np.ndarray
    noise_scale: np.ndarray
    n_lags: int
    name: str
    seed: int
    mixing: list[np.ndarray] = field(default_factory=list, repr=False)
    info: dict = field(default_factory=dict, repr=False)

    @property
    def n_latent(self) -> int:
        return int(self.z.shape[-1])

    @property
    def n_domains(self) -> int:
        return int(self.noise_scale.shape[0])

    def observe(self, z: np.ndarray) -> np.ndarray:
        """Apply the observation map (without observation noise) to latents ``(..., d)``.

        Use it with :func:`causalzoo.identifiability.assumptions.mixing_injectivity`.
        """
        z = np.asarray(z, dtype=np.float64)
        n_obs = int(self.info.get("n_mixed", z.shape[-1]))
        out = apply_mlp(z[..., :n_obs], self.mixing)
        lift = self.info.get("lift")
        return out @ lift if lift is not None else out


@dataclass(frozen=True, eq=False)
class TemporalSnapshot:
    """A temporal data set seen as snapshots: each unit measured once, at one step.

    Attributes
    ----------
    x : numpy.ndarray, (n_units, n_features) float32
        The unit's observation at its step.
    z : numpy.ndarray, (n_units, n_latent) float32
        The true latents at that step.
    step : numpy.ndarray, (n_units,) int64
        The step each unit was measured at (its time point).
    u : numpy.ndarray
        The source's auxiliary variable of each unit at its step (the domain for LEAP, TDRL
        and CaRiNG).
    source : TemporalData
        The full sequences (for comparing with sequence mode).
    """

    x: np.ndarray
    z: np.ndarray
    step: np.ndarray
    u: np.ndarray
    source: TemporalData = field(repr=False)


def snapshot(data: TemporalData, *, seed: int = 0, min_step: int = 0) -> TemporalSnapshot:
    """Keep one uniformly random step of each unit, as in a single-cell time course.

    Sequencing destroys a cell, so each cell is seen once; this turns any temporal generator
    into that design, with the ground truth at the kept step.

    Parameters
    ----------
    data : TemporalData
        Output of a temporal generator.
    seed : int
        Seed of the step draws.
    min_step : int
        Smallest step kept (e.g. ``data.n_lags`` to skip the initial history).

    Examples
    --------
    >>> snap = snapshot(leap_nonstationary(n_domains=3, n_per_domain=10, n_latent=4), seed=0)
    >>> snap.x.shape, snap.z.shape, snap.step.shape
    ((30, 4), (30, 4), (30,))
    """
    n_units, n_steps = data.x.shape[:2]
    low = _check_int("min_step", min_step, 0)
    if low >= n_steps:
        raise CausalZooError(f"min_step={min_step} but the sequences have {n_steps} steps.")
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    step = rng.integers(low, n_steps, size=n_units)
    rows = np.arange(n_units)
    u = data.u[rows, step] if np.ndim(data.u) == 3 else data.u
    return TemporalSnapshot(x=data.x[rows, step], z=data.z[rows, step], step=step, u=u,
                            source=data)


def _lag_matrices(rng: np.random.Generator, d: int, n_lags: int, density: float,
                  self_only: bool = False) -> np.ndarray:
    """Sparse lag weights ``±U(0.5, 1)``, every node with >= 1 parent at lag 1, then scaled
    so that the sum over lags of spectral norms is 0.9 (the leaky-ReLU transition, which is
    1-Lipschitz, is then contractive and long sequences stay bounded).

    ``self_only``: only the diagonal is kept (each node its own lag-1 parent, its own parent
    at later lags with probability ``density``). The random draws are the same either way,
    so the caller's later draws (noise, mixing) do not change with it."""
    mask = rng.random((n_lags, d, d)) < density
    mask[0, rng.integers(d, size=d), np.arange(d)] = True
    if self_only:
        mask &= np.eye(d, dtype=bool)
        mask[0] = np.eye(d, dtype=bool)
    w = rng.uniform(0.5, 1.0, (n_lags, d, d)) * rng.choice([-1.0, 1.0], (n_lags, d, d)) * mask
    norms = np.linalg.norm(w, ord=2, axis=(1, 2)).sum()
    return w * (0.9 / norms)


def _check_dynamics(dynamics, name: str) -> None:
    if dynamics not in ("leaky_relu", "linear"):
        raise CausalZooError(
            f"dynamics={dynamics!r} is not a {name} transition; use 'leaky_relu' or 'linear'."
        )


def domain_noise_scales(seed: int, n_domains: int, d: int, noise: float,
                        vary: bool) -> np.ndarray:
    """Transition noise sd per domain and latent, ``(n_domains, d)``: ``noise`` everywhere,
    or with ``vary`` ``noise * U(0, 1)`` drawn from the stream ``(seed, 1)``, apart from the
    generator's own, so that the rest of a draw is the one with ``vary=False``
    (``tdrl_changing(noise_change=True)``, ``caring(n_domains > 1)``)."""
    if not vary:
        return np.full((n_domains, d), noise)
    return noise * np.random.default_rng((seed, 1)).uniform(0.0, 1.0, (n_domains, d))


def leap_nonstationary(
    *,
    n_domains: int = 20,
    n_per_domain: int = 200,
    n_latent: int = 8,
    n_lags: int = 2,
    n_steps: int = 6,
    graph_density: float = 0.3,
    noise_scale: float = 0.1,
    n_mixing_layers: int = 2,
    self_lags_only: bool = False,
    dynamics: str = "leaky_relu",
    seed: int = 0,
) -> TemporalData:
    """LEAP's non-stationary-noise process (``nonlinear_gau_cins``), seeded.

    Generative story (``d = n_latent`` latents, ``L = n_lags``):

    1. lag matrices ``B_l`` (shared by all domains): sparse (each entry non-zero with
       probability ``graph_density``, every node has a lag-1 parent), entries ``±U(.5, 1)``,
       scaled so that ``sum_l ||B_l||_2 = 0.9`` (``self_lags_only=True``: diagonal
       ``B_l``, each latent's only lagged parent is its own past);
    2. per domain ``u`` and dimension ``i`` a noise modulation ``m_{u,i} ~ U(0, 1)``; noise
       ``eps_{t,i} ~ N(0, (noise_scale * m_{u,i})^2)``: the noise distribution changes with
       the domain, which is the source of identifiability;
    3. history ``z_{0..L-1} ~ N(0, I)``; then
       ``z_t = leaky_relu(sum_l leaky_relu(z_{t-l} B_l) + eps_t)`` (slope 0.2;
       ``dynamics="linear"``: ``z_t = sum_l z_{t-l} B_l + eps_t``, a Gaussian vector
       autoregression);
    4. ``x_t = MLP(z_t)``: ``h <- leaky_relu(h) A_k`` for ``n_mixing_layers`` Haar-orthogonal
       ``A_k``, a bijection of ``R^d`` (``n_features = n_latent``), no observation noise.

    Assumptions it satisfies (LEAP, Yao et al. 2022): invertible mixing; transition noise
    independent across dimensions and of the history; sufficient variability of the noise
    distribution across domains (``n_domains`` >= 2d + 1 distinct modulations, here drawn
    at random). Identifiable: ``z`` up to permutation and component-wise invertible maps;
    score with Spearman MCC against :func:`~causalzoo.identifiability.entangled_floor`.

    The published configuration is ``d = 8``, 2 lags + 4 steps, 20 domains x 7500
    sequences (MCC 0.97 for LEAP); the defaults are smaller for tests. At a few thousand
    sequences noise of sd ``0.1 U(0, 1)`` is too small to resolve; ``noise_scale=1.0``
    (sd ``U(0, 1)``) is the setting of the dynamical model's recovery test
    (``docs/models/dynamical_measurements.md``, "Recovery, measured").

    Parameters
    ----------
    n_domains, n_per_domain : int
        Domains and sequences per domain (``n_units = n_domains * n_per_domain``).
    n_latent : int
    n_lags : int
    n_steps : int
        Total steps per sequence, history included (>= ``n_lags + 1``).
    graph_density : float in [0, 1]
    noise_scale : float > 0
    n_mixing_layers : int
    self_lags_only : bool
        Keep only the diagonal of every ``B_l``: latent ``i``'s lagged parents are its own
        past (at lag 1 always, at later lags with probability ``graph_density``), so the
        latents are independent processes given the domain and, at any step, independent
        given (domain, step). That is the iVAE setting with (domain, step) as the auxiliary
        variable, which a snapshot (each unit seen at one step) keeps; cross-lag edges
        (the default) break it, weakly at ``noise_scale=1.0``. Measured, it does not make
        snapshot mode recover (``docs/models/dynamical_measurements.md``, "Snapshot recovery,
        measured"). The random draws are the same as without it, so modulation, mixing,
        history and noise are those of the default draw with the same seed; ``graph`` is
        the diagonal graph.
    dynamics : {"leaky_relu", "linear"}
        LEAP's leaky-ReLU transition (default) or the linear one (the same draw otherwise:
        lag matrices, modulations, history, noise and mixing are identical). With linear
        dynamics every step's population law given the domain is Gaussian, which is what
        snapshot mode can compute exactly (``transition="linear"``,
        :mod:`causalzoo.models.dynamical_snapshot`); the domains' noise scales still
        identify the latents (a Gaussian with variances that change across domains, as in
        the iVAE).
    seed : int

    Returns
    -------
    TemporalData
        ``u`` is the domain of each sequence; ``info["modulation"]`` is ``m`` (domains x d);
        ``info["self_lags_only"]`` and ``info["dynamics"]`` the options.

    Examples
    --------
    >>> data = leap_nonstationary(n_domains=3, n_per_domain=10, n_latent=4, seed=0)
    >>> data.x.shape, data.z.shape, data.u.shape, data.graph.shape
    ((30, 6, 4), (30, 6, 4), (30,), (2, 4, 4))
    """
    n_dom = _check_int("n_domains", n_domains, 1)
    n_per = _check_int("n_per_domain", n_per_domain, 1)
    d = _check_int("n_latent", n_latent, 1)
    lags = _check_int("n_lags", n_lags, 1)
    steps = _check_int("n_steps", n_steps, lags + 1)
    density = _check_float("graph_density", graph_density, 0.0, 1.0)
    noise = _check_float("noise_scale", noise_scale, 0.0, low_open=True)
    layers = _check_int("n_mixing_layers", n_mixing_layers, 1)
    self_lags_only = check_bool("self_lags_only", self_lags_only,
                                meaning="diagonal lag matrices or LEAP's sparse ones")
    _check_dynamics(dynamics, "LEAP")
    seed = _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)

    b = _lag_matrices(rng, d, lags, density, self_only=bool(self_lags_only))
    modulation = rng.uniform(0.0, 1.0, (n_dom, d))
    sigma = noise * modulation
    mixing = invertible_mlp(rng, d, layers)
    u = np.repeat(np.arange(n_dom), n_per)
    scale = sigma[u]  # (n, d)
    z = np.zeros((u.size, steps, d))
    z[:, :lags] = rng.normal(size=(u.size, lags, d))
    for t in range(lags, steps):
        if dynamics == "linear":
            drive = sum(z[:, t - lag - 1] @ b[lag] for lag in range(lags))
            z[:, t] = drive + rng.normal(size=(u.size, d)) * scale
        else:
            drive = sum(leaky_relu(z[:, t - lag - 1] @ b[lag]) for lag in range(lags))
            z[:, t] = leaky_relu(drive + rng.normal(size=(u.size, d)) * scale)
    x = apply_mlp(z, mixing)
    f32 = np.float32
    return TemporalData(
        x=x.astype(f32), u=u, z=z.astype(f32), graph=b != 0,
        transition=np.broadcast_to(b, (n_dom, *b.shape)).astype(f32),
        noise_scale=sigma.astype(f32), n_lags=lags, name="leap_nonstationary", seed=seed,
        mixing=mixing, info={"modulation": modulation.astype(f32),
                             "self_lags_only": bool(self_lags_only), "dynamics": dynamics},
    )


def tdrl_changing(
    *,
    n_domains: int = 5,
    n_per_domain: int = 400,
    n_latent: int = 8,
    n_lags: int = 2,
    n_steps: int = 3,
    graph_density: float = 0.3,
    n_changing: int = 2,
    noise_scale: float = 0.1,
    n_mixing_layers: int = 2,
    dynamics: str = "leaky_relu",
    noise_change: bool = False,
    seed: int = 0,
) -> TemporalData:
    """TDRL's changing-causal-dynamics process, seeded.

    Generative story:

    1. base lag matrices ``B_l`` as in :func:`leap_nonstationary`;
    2. ``n_changing`` entries of the lag-1 matrix are domain-specific: in domain ``u`` they
       take weights ``U(-1, 1)`` (TDRL's *change* setting); if some domain's lag matrices
       become expansive, every domain's are multiplied by one common factor, so that the
       largest ``sum_l ||B_l^u||_2`` is 0.95 and only the ``n_changing`` entries differ
       across domains (a factor per domain would change every weight of that domain);
    3. noise ``eps_t ~ N(0, noise_scale^2 I)`` in every domain (only the dynamics change);
       with ``noise_change=True`` the standard deviation of latent ``i`` in domain ``u`` is
       ``noise_scale * m[u, i]``, ``m ~ U(0, 1)`` as in :func:`leap_nonstationary`, so the
       whole mechanism (lag weights and noise scale) changes across domains;
    4. ``z_t = leaky_relu(sum_l z_{t-l} B_l^u) + eps_t`` (``dynamics="linear"``: without
       the leaky ReLU, a sparse vector autoregression whose lag weights change across
       domains); history ``z_{0..L-1} ~ N(0, I)``;
    5. ``x_t = MLP(z_t)``, the invertible leaky-ReLU MLP of :func:`leap_nonstationary`.

    TDRL's own generator (``pnl_change_gaussian_ts``) puts the noise inside the outer
    leaky ReLU, ``leaky_relu(sum_l leaky_relu(z_{t-l} B_l^u) + eps_t)`` as
    :func:`leap_nonstationary` does, which makes the noise scale depend on the history;
    here the noise is additive with one scale everywhere, so a rotation of the latents keeps
    the noise law and the basis is singled out by the sparse change of the dynamics across
    domains (and, in practice, by the nonlinearity of the shared dynamics:
    ``docs/models/dynamical_measurements.md``, "TDRL's changing dynamics").

    Assumptions it satisfies (TDRL, Yao et al. 2022): invertible mixing, conditionally
    independent transitions given the history and the domain, time-delayed influences
    only (no instantaneous edges), and transitions that change across domains. Identifiable:
    ``z`` up to permutation and component-wise invertible maps. Published setting: ``d = 8``,
    2 lags + 1 step, 5 domains x 40000 sequences, dense lag matrices (``graph_density=1``).

    Parameters
    ----------
    n_domains, n_per_domain : int
    n_latent, n_lags : int
    n_steps : int
        Total steps, history included (>= ``n_lags + 1``).
    graph_density : float in [0, 1]
    n_changing : int
        Lag-1 entries whose weight differs across domains (<= ``n_latent^2``).
    noise_scale : float > 0
    n_mixing_layers : int
    dynamics : {"leaky_relu", "linear"}
        The transition: ``"leaky_relu"`` (default) applies the leaky ReLU to the lagged
        drive; ``"linear"`` leaves it out (the same draw otherwise: lag weights, changing
        entries, history, noise and mixing are identical). With linear dynamics the law of
        the latents is unchanged by a rotation of them, so only the sparsity of the change
        (and of the lag graph) tells the true basis from a rotated one; measured in
        ``docs/models/dynamical_measurements.md``, "TDRL's changing dynamics".
    noise_change : bool
        Whether the domains also change every latent's transition noise scale (above).
        With Gaussian noise of one scale, the second derivative of the log transition
        density in ``z_t`` is the same in every domain, so TDRL's sufficient-variability
        condition fails whatever the lag weights do; with the scale changing it can hold.
        The modulation ``m`` comes from its own random stream: lag weights, changing
        entries, history, mixing and the standard-normal noise draws are those of the
        draw without it. Measured in ``docs/models/dynamical_measurements.md``, "TDRL's
        changing mechanisms".
    seed : int

    Returns
    -------
    TemporalData
        ``transition[u]`` holds the lag matrices of domain ``u``; ``info["changing"]`` the
        ``(row, column)`` of the changing lag-1 entries, ``info["dynamics"]`` the
        transition, ``info["noise_change"]`` the option; ``noise_scale[u]`` the noise
        standard deviations of domain ``u``.

    Examples
    --------
    >>> data = tdrl_changing(n_domains=2, n_per_domain=5, n_latent=3, seed=1)
    >>> data.x.shape, data.transition.shape
    ((10, 3, 3), (2, 2, 3, 3))
    """
    n_dom = _check_int("n_domains", n_domains, 1)
    n_per = _check_int("n_per_domain", n_per_domain, 1)
    d = _check_int("n_latent", n_latent, 1)
    lags = _check_int("n_lags", n_lags, 1)
    steps = _check_int("n_steps", n_steps, lags + 1)
    density = _check_float("graph_density", graph_density, 0.0, 1.0)
    n_chg = _check_int("n_changing", n_changing, 0)
    if n_chg > d * d:
        raise CausalZooError(
            f"n_changing={n_chg} exceeds the {d * d} entries of a lag matrix; lower it."
        )
    noise = _check_float("noise_scale", noise_scale, 0.0, low_open=True)
    layers = _check_int("n_mixing_layers", n_mixing_layers, 1)
    _check_dynamics(dynamics, "TDRL")
    noise_change = check_bool("noise_change", noise_change,
                              meaning="whether the domains change the noise scales")
    seed = _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    link = leaky_relu if dynamics == "leaky_relu" else (lambda a: a)

    base = _lag_matrices(rng, d, lags, density)
    flat = rng.choice(d * d, size=n_chg, replace=False)
    rows, cols = np.unravel_index(flat, (d, d))
    trans = np.repeat(base[None], n_dom, axis=0)
    trans[:, 0, rows, cols] = rng.uniform(-1.0, 1.0, (n_dom, n_chg))
    largest = np.linalg.norm(trans, ord=2, axis=(2, 3)).sum(axis=1).max()
    if largest > 0.95:  # one factor for all domains: the change stays in n_changing entries
        trans *= 0.95 / largest
    sigma = domain_noise_scales(seed, n_dom, d, noise, vary=noise_change)
    mixing = invertible_mlp(rng, d, layers)
    u = np.repeat(np.arange(n_dom), n_per)
    z = np.zeros((u.size, steps, d))
    z[:, :lags] = rng.normal(size=(u.size, lags, d))
    for t in range(lags, steps):
        drive = np.einsum("nli,nlij->nj", z[:, t - lags:t][:, ::-1], trans[u])
        z[:, t] = link(drive) + rng.normal(size=(u.size, d)) * sigma[u]
    x = apply_mlp(z, mixing)
    f32 = np.float32
    return TemporalData(
        x=x.astype(f32), u=u, z=z.astype(f32), graph=(trans != 0).any(axis=0),
        transition=trans.astype(f32), noise_scale=sigma.astype(f32), n_lags=lags,
        name="tdrl_changing", seed=seed, mixing=mixing,
        info={"changing": np.stack([rows, cols], axis=1), "dynamics": dynamics,
              "noise_change": bool(noise_change)},
    )
