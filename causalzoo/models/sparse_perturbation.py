"""The sparse perturbation model (PerturbedVAE; SAMS-VAE as a special case).

Generative story, for cell ``n`` with multi-hot perturbation design ``d_n`` over ``T``
perturbations and one-hot covariates ``c_n``::

    for each perturbation t:                        # plate "perturbations"
        effect_t ~ Normal(0, effect_scale^2 I_K)
        mask_t   ~ Bernoulli(p)^K                   # or a horseshoe prior (no mask)
        shift_t  = mask_t * effect_t
    W ~ Normal(0, 1) on the strict lower triangle   # latent DAG in a fixed order (MAP)
    B ~ Normal(0, 1)                                 # response <- invariant coupling (MAP)
    for each cell n:                                # plate "cells"
        z_inv  ~ Normal(0, I)                        # never depends on d_n
        z_resp = (I - W)^-1 (B z_inv + sum_t d_nt shift_t + eps),  eps ~ N(0, sigma^2 I)
        x      ~ NB(l_n * softmax(f([z_inv, z_resp, c_n])), theta)   # ZINB/Poisson/Gaussian

Guide: amortised ``q(z_inv | x)`` and ``q(z_resp | x, d)`` (Flax NNX encoders), mean-field
``q(effect_t)``, straight-through ``q(mask_t)``, point estimates of ``W`` and ``B``. The
optional PerturbedVAE alignment term ``alpha * ||E q(z_inv | x_n) - E q(z_inv | x_ctrl)||^2``
against a control cell of the same covariates is added outside the ELBO by
:class:`causalzoo.inference.AlignedELBO`; the guide exposes the distance as the deterministic
site ``"alignment_distance"`` when it is given ``x_control``. The optional invariance term
``lambda * n_cells * invariance_discrepancy(E q(z_inv | x), d, c)`` (how far each perturbed
condition's mean invariant encoding lies from its controls' in a minibatch) is added the same
way by :class:`SparsePerturbationELBO`: it keeps perturbation information out of ``z_inv``.

**SAMS-VAE** is the configuration ``scm_graph="none"`` (``W = 0``), ``couple_invariant=False``
(``B = 0``), ``alignment=0`` and ``invariance=0``: then
``z = [z_inv, z_resp] = z_basal + [0, D (E * M)]`` with ``z_basal ~ N(0, I)``, SAMS-VAE's
generative model (Bereket & Karaletsos, 2023).

**Identifiability class** (PerturbedVAE's claim): ``z_resp`` up to permutation and scaling,
``z_inv`` up to a block-linear map. Assumptions: a smooth injective decoder; sparse shifts
whose supports vary enough across perturbations (every response latent targeted, distinct
target sets); enough perturbations; optimal alignment for the invariant block.

**Prediction** of an unseen combination "A+B" in a context: take that context's control
cells, draw ``z_inv`` from ``q(z_inv | x_ctrl)``, set ``d`` to the combination, draw
``z_resp`` from the SCM with posterior draws of the shifts, decode and sample counts.

References
----------
- Jiang et al., *What Makes a Representation Good for Single-Cell Perturbation Prediction?*,
  ICML 2026, arXiv:2605.19343 (PerturbedVAE).
- Bereket & Karaletsos, *Modelling Cellular Perturbations with the Sparse Additive Mechanism
  Shift Variational Autoencoder*, NeurIPS 2023 (SAMS-VAE).
- Lopez et al., *Learning Causal Representations of Single Cells via Sparse Mechanism Shift
  Modeling*, CLeaR 2023 (sVAE+).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

from .._errors import CausalZooError, check_int
from ..blocks.likelihoods import Likelihood, get_likelihood
from ..blocks.mechanisms import LinearGaussianSCM, additive_shift
from ..blocks.nn import attach, default_factory
from ..blocks.priors import SparsityPrior, get_sparsity_prior
from ..inference.losses import AlignedELBO

__all__ = [
    "SparsePerturbationConfig",
    "SparsePerturbationELBO",
    "cells_plate",
    "global_guide",
    "invariance_discrepancy",
    "sparse_perturbation_guide",
    "sparse_perturbation_model",
]

NETWORK_NAMES = ("decoder", "encoder_invariant", "encoder_response")


@dataclass(frozen=True)
class SparsePerturbationConfig:
    """Hyper-parameters of the sparse perturbation model (all JSON-serialisable by name).

    Parameters
    ----------
    n_latent_invariant, n_latent_response : int
        Sizes of the invariant block ``z_inv`` and the response block ``z_resp``.
    n_hidden, n_layers : int
        Width and depth of the encoder and decoder MLPs.
    likelihood : str or Likelihood
        ``"nb"`` (default), ``"zinb"``, ``"poisson"`` or ``"gaussian"`` (log-normalised
        data), or a :class:`causalzoo.blocks.likelihoods.Likelihood` instance.
    sparsity : str or SparsityPrior
        ``"bernoulli"`` (mask times effect) or ``"horseshoe"``, or an instance.
    mask_probability : float
        Prior probability of a perturbation targeting a response latent (Bernoulli mask).
    effect_scale : float
        Prior scale of the effects.
    scm_graph : str
        ``"lower_triangular"`` (learned DAG in a fixed order) or ``"none"`` (``W = 0``).
    couple_invariant : bool
        Learn ``B``, the response block's dependence on ``z_inv``.
    alignment : float
        Weight ``alpha`` of the PerturbedVAE alignment term (0 switches it off).
    invariance : float
        Weight ``lambda`` of the invariance term (0 switches it off): in each minibatch, the
        squared difference between the mean invariant encoding ``E q(z_inv | x)`` of each
        perturbed condition and that of the control cells of the same covariates
        (:func:`invariance_discrepancy`), per cell, added outside the ELBO by
        :class:`SparsePerturbationELBO`. It keeps perturbation information out of ``z_inv``
        (the model's ``z_inv`` never depends on ``d``).
    learn_noise : bool
        Learn the response variables' exogenous noise scales ``sigma`` (else ``sigma = 1``).
    activation : str
        Hidden activation of the MLPs.
    """

    n_latent_invariant: int = 8
    n_latent_response: int = 8
    n_hidden: int = 128
    n_layers: int = 2
    likelihood: str | Likelihood = "nb"
    sparsity: str | SparsityPrior = "bernoulli"
    mask_probability: float = 0.2
    effect_scale: float = 1.0
    scm_graph: str = "lower_triangular"
    couple_invariant: bool = True
    alignment: float = 0.0
    invariance: float = 0.0
    learn_noise: bool = False
    activation: str = "relu"
    networks: Mapping[str, Callable] | None = field(default=None, compare=False)

    def __post_init__(self):
        for name, minimum in (("n_latent_invariant", 1), ("n_latent_response", 1),
                              ("n_hidden", 1), ("n_layers", 0)):
            # numpy integers are accepted and stored as int (the config is saved as JSON)
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum))
        for name in ("alignment", "invariance"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not 0 <= value < float("inf")
            ):
                raise CausalZooError(
                    f"{name} must be a number >= 0 (and finite); got {value!r}."
                )
        unknown = set(self.networks or {}) - set(NETWORK_NAMES)
        if unknown:
            raise CausalZooError(
                f"Unknown network name(s) {sorted(unknown)}; replaceable networks are "
                f"{list(NETWORK_NAMES)}."
            )
        # Build the blocks once to validate their arguments early.
        self.likelihood_block, self.sparsity_block, self.scm_block  # noqa: B018

    @property
    def likelihood_block(self) -> Likelihood:
        return get_likelihood(self.likelihood)

    @property
    def sparsity_block(self) -> SparsityPrior:
        if isinstance(self.sparsity, SparsityPrior):
            return self.sparsity
        if isinstance(self.sparsity, str) and self.sparsity.lower() == "bernoulli":
            return get_sparsity_prior(
                "bernoulli", probability=self.mask_probability, effect_scale=self.effect_scale
            )
        return get_sparsity_prior(self.sparsity)

    @property
    def scm_block(self) -> LinearGaussianSCM:
        return LinearGaussianSCM(
            graph=self.scm_graph,
            couple_invariant=self.couple_invariant,
            learn_noise=self.learn_noise,
        )

    def network(self, name: str) -> Callable:
        """The factory ``(in_features, out_features, *, rngs) -> nnx.Module`` of a network."""
        custom = (self.networks or {}).get(name)
        return custom or default_factory(self.n_hidden, self.n_layers, self.activation)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; custom block instances or networks cannot be saved."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "networks":
                if value:
                    raise CausalZooError(
                        "A model with custom networks cannot be saved as plain data: pass "
                        "the same `networks=` again when loading (cz.load(..., networks=...))."
                    )
                continue
            if isinstance(value, (Likelihood, SparsityPrior)):
                value = value.name
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides) -> SparsePerturbationConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise CausalZooError(
                f"Saved configuration has unknown fields {sorted(unknown)}: it was written by "
                "an incompatible causalzoo version."
            )
        return cls(**{**d, **overrides})

    @classmethod
    def sams_vae(cls, **kwargs) -> SparsePerturbationConfig:
        """The SAMS-VAE configuration: ``W = 0``, ``B = 0``, no alignment."""
        return cls(**{**kwargs, "scm_graph": "none", "couple_invariant": False, "alignment": 0.0,
                      "invariance": 0.0})


DEFAULT_CONFIG = SparsePerturbationConfig()


class cells_plate:
    """The ``cells`` plate of a minibatch of ``batch_size`` cells out of ``n_cells``.

    Log-densities inside are scaled by ``n_cells / batch_size`` so that a minibatch gives an
    unbiased estimate of the full-data ELBO. Unlike ``plate(..., subsample_size=...)`` it draws
    no subsample indices: the caller has already chosen the cells.
    """

    def __init__(self, batch_size: int, n_cells: int | None = None):
        self.plate = numpyro.plate("cells", batch_size, dim=-1)
        scale = 1.0 if n_cells is None else n_cells / batch_size
        self.scale = handlers.scale(scale=scale) if scale != 1.0 else None

    def __enter__(self):
        if self.scale is not None:
            self.scale.__enter__()
        return self.plate.__enter__()

    def __exit__(self, *exc):
        self.plate.__exit__(*exc)
        if self.scale is not None:
            self.scale.__exit__(*exc)


def _shapes(x, design, covariates, n_genes):
    if design is None:
        raise CausalZooError(
            "The sparse perturbation model needs `design`, the (cells, perturbations) "
            "multi-hot matrix; use zeros for control cells."
        )
    n_batch = design.shape[0]
    if covariates is None:
        covariates = jnp.zeros((n_batch, 0), dtype=design.dtype)
    if x is not None:
        n_genes = x.shape[-1]
    if n_genes is None:
        raise CausalZooError("Pass `n_genes` when `x` is None (e.g. for prior predictive draws).")
    return n_batch, covariates, n_genes


def sparse_perturbation_model(
    x=None,
    design=None,
    covariates=None,
    library_size=None,
    *,
    n_cells: int | None = None,
    n_genes: int | None = None,
    config: SparsePerturbationConfig = DEFAULT_CONFIG,
    x_control=None,
):
    """The generative model (see the module docstring).

    Parameters
    ----------
    x : array (cells, genes), optional
        Observed expression (counts for count likelihoods); ``None`` to sample.
    design : array (cells, T)
        Multi-hot perturbation design.
    covariates : array (cells, C), optional
        One-hot covariates, fed to the decoder.
    library_size : array (cells,), optional
        Library sizes; defaults to ``x.sum(-1)`` (required when ``x`` is None and the
        likelihood uses it).
    n_cells : int, optional
        Total number of cells when ``x`` is a minibatch (scales the cell log-densities).
    n_genes : int, optional
        Number of genes when ``x`` is None.
    config : SparsePerturbationConfig
        Hyper-parameters and blocks.
    x_control : ignored
        Accepted so model and guide share a signature (used by the guide's alignment term).

    Returns
    -------
    dict
        ``{"z_inv", "z_resp", "shift", "x"}`` of this trace.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro import handlers
    >>> design = jnp.eye(3)[jnp.array([0, 1, 2, 0])]
    >>> tr = handlers.trace(handlers.seed(sparse_perturbation_model, 0)).get_trace(
    ...     design=design, library_size=jnp.full(4, 100.0), n_genes=5)
    >>> tr["x"]["value"].shape
    (4, 5)
    """
    n_batch, covariates, n_genes = _shapes(x, design, covariates, n_genes)
    lik = config.likelihood_block
    k_inv, k_resp = config.n_latent_invariant, config.n_latent_response
    n_perturbations = design.shape[-1]

    shifts = config.sparsity_block.model(n_perturbations, k_resp)
    weights, coupling = config.scm_block.model(k_resp, k_inv)
    noise_scale = config.scm_block.noise(k_resp)
    decoder = attach(
        "decoder",
        lambda rngs: config.network("decoder")(
            k_inv + k_resp + covariates.shape[-1], lik.n_outputs * n_genes, rngs=rngs
        ),
    )
    if library_size is None and x is not None:
        library_size = x.sum(-1)
    if library_size is None and lik.uses_library:
        raise CausalZooError("Pass `library_size` when `x` is None for a count likelihood.")

    with cells_plate(n_batch, n_cells):
        z_inv = numpyro.sample("z_inv", dist.Normal(0.0, 1.0).expand([k_inv]).to_event(1))
        exogenous = z_inv @ coupling.T + additive_shift(design, shifts)
        z_resp = numpyro.sample(
            "z_resp", config.scm_block.distribution(exogenous, weights, noise_scale)
        )
        out = decoder(jnp.concatenate([z_inv, z_resp, covariates], axis=-1))
        x = numpyro.sample("x", lik(out, library_size).to_event(1), obs=x)
    return {"z_inv": z_inv, "z_resp": z_resp, "shift": shifts, "x": x}


def global_guide(n_perturbations: int, *, config: SparsePerturbationConfig = DEFAULT_CONFIG):
    """The guide's global part: ``q(effect)``, ``q(mask)`` (or horseshoe factors), ``W``, ``B``.

    Used by :func:`sparse_perturbation_guide` and on its own to draw posterior samples of the
    shifts for prediction. Returns the guide's draws ``(shifts, W, B)``.
    """
    shifts = config.sparsity_block.guide(n_perturbations, config.n_latent_response)
    weights, coupling = config.scm_block.guide(config.n_latent_response, config.n_latent_invariant)
    return shifts, weights, coupling


def encoder_input(x, likelihood: Likelihood):
    """What the encoders see: ``log1p`` counts for count likelihoods, ``x`` otherwise."""
    return jnp.log1p(x) if likelihood.count_data else x


def _encoder(name, in_features, n_latent, config):
    """Attach network ``name`` and return ``h -> (loc, scale)`` of a diagonal Gaussian."""
    net = attach(name, lambda rngs: config.network(name)(in_features, 2 * n_latent, rngs=rngs))

    def encode(h):
        loc, raw = jnp.split(net(h), 2, axis=-1)
        return loc, jax.nn.softplus(raw) + 1e-4

    return encode


def sparse_perturbation_guide(
    x=None,
    design=None,
    covariates=None,
    library_size=None,
    *,
    n_cells: int | None = None,
    n_genes: int | None = None,
    config: SparsePerturbationConfig = DEFAULT_CONFIG,
    x_control=None,
):
    """Amortised guide: ``q(z_inv | x) q(z_resp | x, d)`` times the global factors.

    With ``x_control`` (one control cell of the same covariates per cell) it records the
    deterministic site ``"alignment_distance"``, ``||E q(z_inv | x) - E q(z_inv | x_ctrl)||^2``
    per cell, which :class:`causalzoo.inference.AlignedELBO` adds to the loss.
    """
    if x is None:
        raise CausalZooError("The guide needs the observed `x` (it is amortised over cells).")
    n_batch, covariates, n_genes = _shapes(x, design, covariates, n_genes)
    lik = config.likelihood_block
    global_guide(design.shape[-1], config=config)
    h = encoder_input(x, lik)
    encode_inv = _encoder("encoder_invariant", n_genes, config.n_latent_invariant, config)
    encode_resp = _encoder(
        "encoder_response", n_genes + design.shape[-1], config.n_latent_response, config
    )
    with cells_plate(n_batch, n_cells):
        loc_inv, scale_inv = encode_inv(h)
        numpyro.sample("z_inv", dist.Normal(loc_inv, scale_inv).to_event(1))
        # Not centred on the prior's mean given the shift draw (SAMS-VAE's correlated guide):
        # measured on the generator, centring lets the encoder absorb the shifts and the masks
        # switch off (benchmarks/recovery_sparse_perturbation.py).
        loc_resp, scale_resp = encode_resp(jnp.concatenate([h, design], axis=-1))
        numpyro.sample("z_resp", dist.Normal(loc_resp, scale_resp).to_event(1))
        if x_control is not None:
            loc_ctrl, _ = encode_inv(encoder_input(x_control, lik))
            numpyro.deterministic(
                "alignment_distance", jnp.sum((loc_inv - loc_ctrl) ** 2, axis=-1)
            )


def _pair_sums(a, b, gram):
    """Per row ``i``: ``sum_{j, j'} a_ij b_ij' gram_jj'`` (``a``, ``b`` 0/1 masks)."""
    return jnp.sum((a @ gram) * b, axis=-1)


def invariance_discrepancy(z_inv, design, covariates=None):
    """How much the invariant encodings of a minibatch depend on the perturbation.

    For every perturbed cell ``i``, the unbiased estimate of
    ``||mean(z_inv over i's condition) - mean(z_inv over the control cells of i's covariate
    context)||^2`` from the cells of the minibatch (a condition is a distinct design row and
    covariate row); averaged over all cells, controls counting 0, and over nothing where a
    condition or its controls have fewer than two cells in the batch. Zero in expectation
    when ``z_inv`` is independent of the design given the covariates, as the model says it
    is; the within-condition spread does not bias it (pairs of distinct cells only).

    Parameters
    ----------
    z_inv : array (cells, K_inv)
        Invariant encodings (posterior means).
    design : array (cells, T)
        Multi-hot design; a control cell's row is all zeros.
    covariates : array (cells, C), optional
        One-hot covariates; conditions are compared with the controls of their context.

    Returns
    -------
    scalar
        The mean over cells (may be slightly negative: an unbiased estimate).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> design = jnp.array([[0.], [0.], [1.], [1.]])
    >>> float(invariance_discrepancy(jnp.array([[0.], [0.], [2.], [2.]]), design))
    2.0
    """
    n = design.shape[0]
    if covariates is None:
        covariates = jnp.zeros((n, 0), design.dtype)
    key = jnp.concatenate([design, covariates], axis=-1)
    same_condition = (jnp.abs(key[:, None, :] - key[None, :, :]).sum(-1) == 0).astype(z_inv.dtype)
    same_context = (
        jnp.abs(covariates[:, None, :] - covariates[None, :, :]).sum(-1) == 0
    ).astype(z_inv.dtype)
    is_control = design.sum(-1) == 0
    controls = same_context * is_control[None, :].astype(z_inv.dtype)
    gram = z_inv @ z_inv.T
    diag = jnp.diagonal(gram)
    n_cond = same_condition.sum(-1)
    n_ctrl = controls.sum(-1)
    within_cond = (_pair_sums(same_condition, same_condition, gram) - same_condition @ diag) / (
        jnp.maximum(n_cond * (n_cond - 1), 1.0)
    )
    within_ctrl = (_pair_sums(controls, controls, gram) - controls @ diag) / (
        jnp.maximum(n_ctrl * (n_ctrl - 1), 1.0)
    )
    cross = _pair_sums(same_condition, controls, gram) / jnp.maximum(n_cond * n_ctrl, 1.0)
    valid = (~is_control) & (n_cond >= 2) & (n_ctrl >= 2)
    return jnp.sum(jnp.where(valid, within_cond + within_ctrl - 2 * cross, 0.0)) / n


class SparsePerturbationELBO(AlignedELBO):
    """The loss of the sparse perturbation model: ``-ELBO`` plus the PerturbedVAE alignment
    term (:class:`~causalzoo.inference.AlignedELBO`) plus
    ``invariance * n_cells * invariance_discrepancy(E q(z_inv | x), design, covariates)``.

    The invariance term reads the guide's ``z_inv`` site (its location, the encoder mean)
    and the minibatch's ``design`` and ``covariates``; like the alignment term it is a loss on
    the guide's outputs, not a density, so the model and guide stay unchanged. With both
    weights 0 it is exactly NumPyro's ``TraceMeanField_ELBO``.

    Parameters
    ----------
    alignment, invariance : float
        Weights of the two terms.
    num_particles : int
        Particles of the ELBO estimate.

    Examples
    --------
    >>> loss = SparsePerturbationELBO(invariance=10.0)
    >>> loss.invariance
    10.0
    """

    def __init__(self, alignment: float = 0.0, invariance: float = 0.0, *,
                 num_particles: int = 1):
        super().__init__(alignment, num_particles=num_particles)
        self.invariance = float(invariance)

    def _has_penalty(self) -> bool:
        return super()._has_penalty() or bool(self.invariance)

    def _penalty(self, guide_trace, kwargs):
        total = super()._penalty(guide_trace, kwargs)
        if not self.invariance:
            return total
        loc = guide_trace["z_inv"]["fn"].base_dist.loc
        design = kwargs["design"]
        n_cells = kwargs.get("n_cells") or design.shape[0]
        penalty = invariance_discrepancy(loc, design, kwargs.get("covariates"))
        return total + self.invariance * n_cells * penalty
