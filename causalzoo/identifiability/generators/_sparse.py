"""The sparse-perturbation count generator (known masks, effects and latent SCM)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np

from ..._errors import CausalZooError
from ._checks import check_float as _check_float
from ._checks import check_int as _check_int

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["SparsePerturbationData", "sparse_perturbation"]

_LEAKY_SLOPE = 0.2
_LOGIT_SIGNAL_SD = 1.0
_THETA_MEDIAN = 10.0


@dataclass(frozen=True, eq=False)
class SparsePerturbationData:
    """Ground truth and observations from :func:`sparse_perturbation`.

    Attributes
    ----------
    x : numpy.ndarray, (n, G) float32
        UMI-like counts (non-negative integers stored as float32).
    u : numpy.ndarray, (n, T) float32
        Multi-hot design: ``u[n, t] = 1`` if cell ``n`` received perturbation ``t``.
    z : numpy.ndarray, (n, K_inv + K_resp) float32
        ``[z_inv, z_resp]``.
    z_inv, z_resp : numpy.ndarray, float32
        Invariant and response latents.
    mask, effect, shift : numpy.ndarray, (T, K_resp) float32
        Binary targets, effects and ``shift = mask * effect``.
    W : numpy.ndarray, (K_resp, K_resp) float32
        Strictly lower-triangular SCM weights among response latents.
    B : numpy.ndarray, (K_resp, K_inv) float32
        Coupling of the response latents to the invariant ones.
    library_size : numpy.ndarray, (n,) float32
    labels : numpy.ndarray of str, (n,)
        Condition of each cell: ``"control"``, ``"P0"``, ``"P0+P3"``.
    perturbation_names, gene_names : numpy.ndarray of str
    theta : numpy.ndarray, (G,) float32
        NB concentration per gene.
    graph : numpy.ndarray of bool
        ``W != 0``.
    seed : int
    decoder : dict
        Decoder parameters ``A1, b1, A2, b2`` (logits = A2 @ leaky_relu(A1 @ z + b1) + b2).
    """

    x: np.ndarray
    u: np.ndarray
    z: np.ndarray
    z_inv: np.ndarray
    z_resp: np.ndarray
    mask: np.ndarray
    effect: np.ndarray
    shift: np.ndarray
    W: np.ndarray
    B: np.ndarray
    library_size: np.ndarray
    labels: np.ndarray
    perturbation_names: np.ndarray
    gene_names: np.ndarray
    theta: np.ndarray
    graph: np.ndarray
    seed: int
    decoder: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def conditions(self) -> list[str]:
        """Distinct condition labels in generation order (control, singles, combos)."""
        return list(dict.fromkeys(self.labels.tolist()))

    def to_anndata(self) -> anndata.AnnData:
        """The counts as an AnnData with the ground truth attached.

        Returns
        -------
        anndata.AnnData
            ``X``: float32 CSR counts; ``obs["perturbation"]`` (categorical condition
            labels), ``obs["cell_type"] = "synthetic"``, ``obs["library_size_true"]``;
            ``obsm["z_true"]`` and ``obsm["design"]``; ``uns["ground_truth"]`` with
            ``mask, effect, shift, W, B, theta, graph, perturbation_names, seed``.

        Examples
        --------
        >>> adata = sparse_perturbation(n_cells_per_condition=10, n_genes=20).to_anndata()
        >>> adata.obs["perturbation"].cat.categories[0]
        'control'
        """
        import anndata as ad
        import pandas as pd
        import scipy.sparse as sp

        obs = pd.DataFrame(
            {
                "perturbation": pd.Categorical(self.labels, categories=self.conditions),
                "cell_type": pd.Categorical(["synthetic"] * self.x.shape[0]),
                "library_size_true": self.library_size.astype(np.float32),
            },
            index=[f"cell{i}" for i in range(self.x.shape[0])],
        )
        adata = ad.AnnData(
            X=sp.csr_matrix(self.x.astype(np.float32)),
            obs=obs,
            obsm={"z_true": self.z.copy(), "design": self.u.copy()},
        )
        # Set after construction: a column-less var DataFrame makes anndata 0.13.4 call a
        # pandas option that pandas 3 deprecates (a Pandas4Warning).
        adata.var_names = list(self.gene_names)
        adata.uns["ground_truth"] = {
            "mask": self.mask.copy(),
            "effect": self.effect.copy(),
            "shift": self.shift.copy(),
            "W": self.W.copy(),
            "B": self.B.copy(),
            "theta": self.theta.copy(),
            "graph": self.graph.copy(),
            "perturbation_names": np.asarray(self.perturbation_names, dtype=str),
            "n_latent_invariant": int(self.z_inv.shape[1]),
            "n_latent_response": int(self.z_resp.shape[1]),
            "seed": int(self.seed),
        }
        return adata


def _sample_mask(rng: np.random.Generator, t: int, k: int, density: float) -> np.ndarray:
    mask = rng.random((t, k)) < density
    for i in np.flatnonzero(~mask.any(axis=1)):  # every perturbation hits >= 1 latent
        mask[i, rng.integers(k)] = True
    for j in np.flatnonzero(~mask.any(axis=0)):  # every latent is hit by >= 1 perturbation
        mask[rng.integers(t), j] = True
    return mask.astype(np.float32)


def _leaky_relu(a: np.ndarray) -> np.ndarray:
    return np.where(a > 0, a, _LEAKY_SLOPE * a)


def sparse_perturbation(
    *,
    n_perturbations: int = 6,
    n_cells_per_condition: int = 200,
    n_latent_invariant: int = 2,
    n_latent_response: int = 4,
    n_genes: int = 200,
    mask_density: float = 0.4,
    effect_scale: float = 2.0,
    graph_density: float = 0.0,
    coupling: float = 0.0,
    noise_scale: float = 1.0,
    n_combinations: int = 0,
    mean_library: float = 2000.0,
    n_hidden: int = 64,
    seed: int = 0,
) -> SparsePerturbationData:
    r"""Counts from the sparse perturbation model (PerturbedVAE; SAMS-VAE when W = 0).

    Generative story (T perturbations, K_inv invariant and K_resp response latents,
    G genes), in this order of random draws:

    1. masks ``m_t ~ Bernoulli(mask_density)^K_resp``, repaired so that every perturbation
       has >= 1 active dimension and every response dimension is targeted at least once;
    2. effects ``e_t = sign * (effect_scale/2 + |N(0, effect_scale^2/4)|)`` (bounded away
       from 0); shifts ``s_t = m_t * e_t``;
    3. ``W`` strictly lower-triangular, each entry nonzero with probability
       ``graph_density``, values ``±U(0.3, 0.8)``;
    4. ``B ~ N(0, coupling^2)`` of shape (K_resp, K_inv);
    5. decoder: ``h = leaky_relu(A1 z + b1)`` (slope 0.2, ``n_hidden`` units),
       ``logits = A2 h + b2``; ``A2 h`` is rescaled so that its per-gene standard deviation
       over cells is 1 on average, and ``b2 ~ N(0, 1)`` sets baseline expression;
    6. ``theta_g ~ LogNormal(log 10, 0.5)``;
    7. cells: the conditions are control, each single perturbation and ``n_combinations``
       distinct random pairs ("P1+P4"), ``n_cells_per_condition`` each; ``d_n`` multi-hot;
    8. ``z_inv ~ N(0, I)``; ``z_resp = (I - W)^{-1} (B z_inv + d_n S + eps)``,
       ``eps ~ N(0, noise_scale^2 I)``;
    9. ``library_size ~ LogNormal(log(mean_library), 0.3)``;
       ``rate = library_size * softmax(logits([z_inv, z_resp]))``;
    10. ``x ~ NB(mean=rate, concentration=theta)`` through Gamma-Poisson.

    Identifiability this data supports: z_resp up to permutation and scaling (and sign)
    when the perturbation shifts are sparse and varied (every response dimension is
    targeted by a distinct set of perturbations, which ``mask_density`` < 1 and enough
    perturbations make likely; check ``mask`` for duplicate columns), and z_inv up to a
    block-linear (invertible) map, because z_inv never depends on the design. The decoder is
    a generic (not necessarily injective) MLP; with ``n_genes >> K`` it is injective almost
    surely. Score with :func:`causalzoo.identifiability.mcc` and compare with
    :func:`causalzoo.identifiability.entangled_floor`.

    Parameters
    ----------
    n_perturbations : int
        T, the number of single perturbations ("P0" .. "P{T-1}").
    n_cells_per_condition : int
    n_latent_invariant, n_latent_response : int
        K_inv (>= 0) and K_resp (>= 1).
    n_genes : int
    mask_density : float in (0, 1]
    effect_scale : float > 0
    graph_density : float in [0, 1]
        0 gives ``W = 0`` (no SCM among response latents).
    coupling : float >= 0
        Standard deviation of ``B``; 0 makes z_resp independent of z_inv.
    noise_scale : float > 0
    n_combinations : int
        Number of random distinct pairs of perturbations added as conditions.
    mean_library : float > 0
        Median library size.
    n_hidden : int
    seed : int

    Returns
    -------
    SparsePerturbationData

    Examples
    --------
    >>> data = sparse_perturbation(n_perturbations=4, n_cells_per_condition=50, seed=1)
    >>> data.x.shape, data.u.shape, data.z.shape
    ((250, 200), (250, 4), (250, 6))
    """
    t = _check_int("n_perturbations", n_perturbations, 1)
    n_per = _check_int("n_cells_per_condition", n_cells_per_condition, 1)
    k_inv = _check_int("n_latent_invariant", n_latent_invariant, 0)
    k_resp = _check_int("n_latent_response", n_latent_response, 1)
    g = _check_int("n_genes", n_genes, 2)
    n_combo = _check_int("n_combinations", n_combinations, 0)
    n_hid = _check_int("n_hidden", n_hidden, 1)
    seed = _check_int("seed", seed, 0)
    density = _check_float("mask_density", mask_density, 0.0, 1.0, low_open=True)
    eff = _check_float("effect_scale", effect_scale, 0.0, low_open=True)
    gdens = _check_float("graph_density", graph_density, 0.0, 1.0)
    coup = _check_float("coupling", coupling, 0.0)
    noise = _check_float("noise_scale", noise_scale, 0.0, low_open=True)
    lib = _check_float("mean_library", mean_library, 0.0, low_open=True)
    max_pairs = t * (t - 1) // 2
    if n_combo > max_pairs:
        raise CausalZooError(
            f"n_combinations={n_combo} exceeds the {max_pairs} distinct pairs of "
            f"{t} perturbations; lower n_combinations or raise n_perturbations."
        )
    rng = np.random.default_rng(seed)
    k = k_inv + k_resp

    # 1-2. masks, effects, shifts
    mask = _sample_mask(rng, t, k_resp, density)
    sign = np.where(rng.random((t, k_resp)) < 0.5, -1.0, 1.0)
    effect = sign * (eff * 0.5 + np.abs(rng.normal(0.0, eff / 2.0, size=(t, k_resp))))
    shift = mask * effect
    # 3. SCM among response latents
    nonzero = np.tril(rng.random((k_resp, k_resp)) < gdens, k=-1)
    w_sign = np.where(rng.random((k_resp, k_resp)) < 0.5, -1.0, 1.0)
    W = np.where(nonzero, w_sign * rng.uniform(0.3, 0.8, size=(k_resp, k_resp)), 0.0)
    # 4. coupling
    B = rng.normal(0.0, 1.0, size=(k_resp, k_inv)) * coup
    # 5. decoder
    a1 = rng.normal(0.0, 1.0 / np.sqrt(k), size=(n_hid, k))
    b1 = rng.normal(0.0, 0.1, size=n_hid)
    a2 = rng.normal(0.0, 1.0 / np.sqrt(n_hid), size=(g, n_hid))
    b2 = rng.normal(0.0, 1.0, size=g)
    # 6. dispersion
    theta = np.exp(rng.normal(np.log(_THETA_MEDIAN), 0.5, size=g))
    # 7. design
    names = [f"P{i}" for i in range(t)]
    conditions: list[tuple[int, ...]] = [()] + [(i,) for i in range(t)]
    if n_combo:
        pairs = list(combinations(range(t), 2))
        chosen = rng.choice(len(pairs), size=n_combo, replace=False)
        conditions += [pairs[i] for i in sorted(chosen)]
    labels_c = ["+".join(names[i] for i in c) if c else "control" for c in conditions]
    design_c = np.zeros((len(conditions), t))
    for row, c in enumerate(conditions):
        design_c[row, list(c)] = 1.0
    u = np.repeat(design_c, n_per, axis=0)
    labels = np.repeat(np.asarray(labels_c, dtype=str), n_per)
    n = u.shape[0]
    # 8. latents
    z_inv = rng.normal(size=(n, k_inv))
    eps = rng.normal(0.0, noise, size=(n, k_resp))
    pre = z_inv @ B.T + u @ shift + eps
    z_resp = np.linalg.solve(np.eye(k_resp) - W, pre.T).T
    z = np.concatenate([z_inv, z_resp], axis=1)
    # 9. library sizes and rates
    library = np.exp(rng.normal(np.log(lib), 0.3, size=n))
    hidden = _leaky_relu(z @ a1.T + b1)
    spread = float((hidden @ a2.T).std(axis=0).mean())
    a2 = a2 * (_LOGIT_SIGNAL_SD / spread) if spread > 0 else a2
    logits = hidden @ a2.T + b2
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    rate = library[:, None] * probs
    # 10. NB counts via Gamma-Poisson
    x = rng.poisson(rng.gamma(shape=theta, scale=rate / theta))

    f32 = np.float32
    return SparsePerturbationData(
        x=x.astype(f32),
        u=u.astype(f32),
        z=z.astype(f32),
        z_inv=z_inv.astype(f32),
        z_resp=z_resp.astype(f32),
        mask=mask.astype(f32),
        effect=effect.astype(f32),
        shift=shift.astype(f32),
        W=W.astype(f32),
        B=B.astype(f32),
        library_size=library.astype(f32),
        labels=labels,
        perturbation_names=np.asarray(names, dtype=str),
        gene_names=np.asarray([f"G{i}" for i in range(g)], dtype=str),
        theta=theta.astype(f32),
        graph=W != 0,
        seed=seed,
        decoder={"A1": a1.astype(f32), "b1": b1.astype(f32), "A2": a2.astype(f32),
                 "b2": b2.astype(f32)},
    )
