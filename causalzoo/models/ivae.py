"""The identifiable VAE (iVAE): a conditionally factorised prior given an auxiliary variable.

Generative story, for point ``n`` with auxiliary variable ``u_n`` (a one-hot segment or
domain label, or any observed covariate vector)::

    for each point n:                                        # plate "cells"
        mu(u_n), log lambda(u_n) = prior_network(u_n)         # Flax NNX MLP
        z_n ~ Normal(mu(u_n), diag lambda(u_n))               # independent given u_n
        x_n ~ Normal(f(z_n), observation_scale^2 I)           # f: decoder MLP
              (or the Gaussian block with learned gene-wise scales, or NB / ZINB / Poisson
               on counts: any causalzoo.blocks likelihood)

Guide: amortised ``q(z_n | x_n, u_n) = Normal(g(x_n, u_n), L(x_n, u_n) L(x_n, u_n)^T)`` with a
full lower-triangular ``L`` (``posterior="full"``, the default) or a diagonal one
(``posterior="diagonal"``, the mean-field guide of the reference code). The networks' weights
are point estimates (``numpyro.param`` sites through ``nnx_module``). The KL term is analytic.

Why a full-covariance guide by default: with a mean-field guide the ELBO is
``log p(x | u)`` minus a gap that is zero only where the decoder's Jacobian has orthogonal
columns, so the ELBO can prefer a rotated (entangled) solution over the true one. Measured
on ``generators.ivae`` with linear mixing (20 segments x 100, d = 5, observation variance
0.01; ``benchmarks/ivae_elbo_gap.py``): at the true parameters the mean-field ELBO is -9.500
nats per point against -8.876 for the whitening rotation; with a full-covariance guide (the
ELBO then equals ``log p(x | u)``) the true parameters score -8.241 against -8.876. See
``docs/models/ivae.md``.

**Identifiability class** (Khemakhem et al. 2020, Theorems 1-2): for this Gaussian
location-scale family the sources are identified up to a permutation and a component-wise
affine map (``prior_mean=False``, variance modulation only: permutation and scaling). Verify
with Pearson MCC (Spearman is the safe choice for finite fits). Assumptions: ``f`` injective
and smooth; conditionally independent sources given ``u``; sufficient variability: at least
``2 d + 1`` distinct values of ``u`` whose natural parameters ``(mu / lambda, -1 / (2
lambda))`` differ in a way that spans ``R^{2d}`` (``d + 1`` values when only the variances
change); observation noise that does not depend on ``u``.

References
----------
- Khemakhem, Kingma, Monti and Hyvärinen, *Variational Autoencoders and Nonlinear ICA: A
  Unifying Framework*, AISTATS 2020 (iVAE; reference code ``ilkhem/iVAE``).
- Hyvärinen and Morioka, *Unsupervised Feature Extraction by Time-Contrastive Learning and
  Nonlinear ICA*, NeurIPS 2016 (TCL, the segment-wise nonstationary sources).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from flax import nnx

from .._errors import CausalZooError, check_int
from ..blocks.likelihoods import Likelihood, get_likelihood
from ..blocks.nn import _ACTIVATIONS, MLP, attach, scale_tril
from .sparse_perturbation import cells_plate

__all__ = ["IVAEConfig", "ivae_model", "ivae_guide", "ivae_encode"]

NETWORK_NAMES = ("prior", "encoder", "decoder")


@dataclass(frozen=True)
class IVAEConfig:
    """Hyper-parameters of the iVAE (all JSON-serialisable).

    Parameters
    ----------
    n_latent : int
        Source dimension ``d``.
    n_hidden, n_layers : int
        Width and depth of the prior, encoder and decoder MLPs.
    activation : str
        Hidden activation (``"leaky_relu"`` as in the reference code).
    layer_norm : bool
        LayerNorm after each hidden layer of the networks.
    likelihood : str or Likelihood
        ``"gaussian"`` (default) for continuous data; ``"nb"``, ``"zinb"``, ``"poisson"`` for
        counts (the decoder then gives per-gene logits with the library size, as in the
        other zoo entries).
    observation_scale : float or None
        Fixed standard deviation of the Gaussian observation noise (the reference fixes
        the variance at 0.01, i.e. 0.1). ``None`` learns a gene-wise scale (the Gaussian
        block). Ignored by count likelihoods.
    prior_mean : bool
        Learn the prior mean ``mu(u)`` as well as the variance; ``False`` is the
        reference's variance-only prior ``N(0, lambda(u))``.
    posterior : {"full", "diagonal"}
        Covariance of the amortised Gaussian guide: a full Cholesky factor (default) or
        diagonal (mean-field, as in the reference code; biased towards entangled solutions,
        see the module docstring).
    """

    n_latent: int = 5
    n_hidden: int = 64
    n_layers: int = 2
    activation: str = "leaky_relu"
    layer_norm: bool = False
    likelihood: str | Likelihood = "gaussian"
    observation_scale: float | None = 0.1
    prior_mean: bool = True
    posterior: str = "full"

    def __post_init__(self):
        for name, minimum in (("n_latent", 1), ("n_hidden", 1), ("n_layers", 0)):
            # numpy integers are accepted and stored as int (the config is saved as JSON)
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum))
        scale = self.observation_scale
        if scale is not None and (
            isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0
        ):
            raise CausalZooError(
                f"observation_scale must be a number > 0, or None to learn it; got {scale!r}."
            )
        if self.activation not in _ACTIVATIONS:
            raise CausalZooError(
                f"activation={self.activation!r} is unknown; use one of {sorted(_ACTIVATIONS)}."
            )
        if self.posterior not in ("full", "diagonal"):
            raise CausalZooError(
                f"posterior={self.posterior!r} is unknown; use 'full' or 'diagonal'."
            )
        self.likelihood_block  # noqa: B018 - validates the likelihood name early

    @property
    def likelihood_block(self) -> Likelihood:
        return get_likelihood(self.likelihood)

    def network(self, name: str, in_features: int, out_features: int, rngs: nnx.Rngs) -> MLP:
        """Build network ``name`` (``"prior"``, ``"encoder"`` or ``"decoder"``)."""
        return MLP(
            in_features,
            out_features,
            n_hidden=self.n_hidden,
            n_layers=self.n_layers,
            rngs=rngs,
            activation=self.activation,
            layer_norm=self.layer_norm,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (a likelihood instance is saved by its name)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(out["likelihood"], Likelihood):
            out["likelihood"] = out["likelihood"].name
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IVAEConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise CausalZooError(
                f"Saved configuration has unknown fields {sorted(unknown)}: it was written by "
                "an incompatible causalzoo version."
            )
        return cls(**d)


DEFAULT_CONFIG = IVAEConfig()


def _check_u(u, n_batch: int | None):
    if u is None:
        raise CausalZooError(
            "The iVAE needs the auxiliary variable `u`, a (cells, n_aux) array (one-hot "
            "segment or domain labels, or covariates)."
        )
    if u.ndim != 2:
        raise CausalZooError(
            f"u must be 2-D (cells, n_aux); got shape {u.shape}. One-hot encode labels first."
        )
    if n_batch is not None and u.shape[0] != n_batch:
        raise CausalZooError(f"u has {u.shape[0]} rows but x has {n_batch}.")


def _n_encoder_outputs(config: IVAEConfig) -> int:
    k = config.n_latent
    return 2 * k + (k * (k - 1) // 2 if config.posterior == "full" else 0)


def ivae_prior(u, config: IVAEConfig = DEFAULT_CONFIG) -> dist.Distribution:
    """The conditional prior ``p(z | u) = prod_i Normal(mu_i(u), lambda_i(u))`` (per point)."""
    k = config.n_latent
    net = attach("prior", lambda rngs: config.network("prior", u.shape[-1], 2 * k, rngs))
    out = net(u)
    mean_raw, log_var = jnp.split(out, 2, axis=-1)
    mean = mean_raw if config.prior_mean else jnp.zeros_like(mean_raw)
    # Clipping keeps early steps finite; the fitted variances sit well inside [e^-8, e^8].
    scale = jnp.exp(0.5 * jnp.clip(log_var, -8.0, 8.0))
    # A diagonal covariance written as a multivariate normal: the same factorised density,
    # and the guide's KL to it is analytic for both guide covariances.
    return dist.MultivariateNormal(mean, scale_tril=scale_tril(scale))


def ivae_model(
    x=None,
    u=None,
    library_size=None,
    *,
    n_cells: int | None = None,
    n_observed: int | None = None,
    config: IVAEConfig = DEFAULT_CONFIG,
):
    """The iVAE generative model (see the module docstring).

    Parameters
    ----------
    x : array (cells, n_observed), optional
        Observations; ``None`` to sample.
    u : array (cells, n_aux)
        Auxiliary variable (one-hot labels or covariates).
    library_size : array (cells,), optional
        Library sizes for count likelihoods (default ``x.sum(-1)``).
    n_cells : int, optional
        Total number of points when ``x`` is a minibatch (scales the log-densities).
    n_observed : int, optional
        Observation dimension when ``x`` is None.
    config : IVAEConfig
        Hyper-parameters.

    Returns
    -------
    dict
        ``{"z", "x"}`` of this trace.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro import handlers
    >>> u = jnp.eye(3)[jnp.array([0, 1, 2, 0])]
    >>> tr = handlers.trace(handlers.seed(ivae_model, 0)).get_trace(u=u, n_observed=4)
    >>> tr["z"]["value"].shape, tr["x"]["value"].shape
    ((4, 5), (4, 4))
    """
    _check_u(u, None if x is None else x.shape[0])
    if x is not None:
        n_observed = x.shape[-1]
    if n_observed is None:
        raise CausalZooError("Pass `n_observed` when `x` is None (e.g. for prior draws).")
    lik = config.likelihood_block
    if library_size is None and x is not None:
        library_size = x.sum(-1)
    if library_size is None and lik.uses_library:
        raise CausalZooError(
            f"Pass `library_size` when `x` is None for the count likelihood {lik.name!r}."
        )
    k = config.n_latent
    decoder = attach(
        "decoder", lambda rngs: config.network("decoder", k, lik.n_outputs * n_observed, rngs)
    )
    with cells_plate(u.shape[0], n_cells):
        z = numpyro.sample("z", ivae_prior(u, config))
        out = decoder(z)
        if lik.name == "gaussian" and config.observation_scale is not None:
            x_dist = dist.Normal(out, config.observation_scale)
        else:
            x_dist = lik(out, library_size)
        x = numpyro.sample("x", x_dist.to_event(1), obs=x)
    return {"z": z, "x": x}


def ivae_encode(x, u, config: IVAEConfig = DEFAULT_CONFIG):
    """Mean and Cholesky factor of ``q(z | x, u)`` (attaches the ``"encoder"`` network).

    Returns
    -------
    loc : array (cells, n_latent)
    scale_tril : array (cells, n_latent, n_latent)
        Lower triangular; diagonal when ``config.posterior == "diagonal"``.
    """
    lik = config.likelihood_block
    k = config.n_latent
    h = jnp.log1p(x) if lik.count_data else x
    h = jnp.concatenate([h, u], axis=-1)
    net = attach(
        "encoder",
        lambda rngs: config.network("encoder", h.shape[-1], _n_encoder_outputs(config), rngs),
    )
    out = net(h)
    loc, raw, lower = out[..., :k], out[..., k:2 * k], out[..., 2 * k:]
    diagonal = jax.nn.softplus(raw) + 1e-4
    return loc, scale_tril(diagonal, lower if config.posterior == "full" else None)


def ivae_guide(
    x=None,
    u=None,
    library_size=None,
    *,
    n_cells: int | None = None,
    n_observed: int | None = None,
    config: IVAEConfig = DEFAULT_CONFIG,
):
    """Amortised guide ``q(z | x, u) = Normal(g(x, u), L L^T)`` (``L`` full or diagonal)."""
    if x is None:
        raise CausalZooError("The guide needs the observed `x` (it is amortised over points).")
    _check_u(u, x.shape[0])
    loc, tril = ivae_encode(x, u, config)
    with cells_plate(x.shape[0], n_cells):
        numpyro.sample("z", dist.MultivariateNormal(loc, scale_tril=tril))
