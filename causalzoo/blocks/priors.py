"""Sparsity priors over per-perturbation latent shifts.

A sparsity block declares the sites that make a shift ``s_t`` for every perturbation ``t``
(model side, inside a ``perturbations`` plate it opens itself) and their variational factors
(guide side). Two families:

* :class:`BernoulliMask` — ``s_t = m_t * e_t`` with ``m_tk ~ Bernoulli(p)`` and
  ``e_t ~ N(0, scale^2 I)``; the guide samples the mask with a straight-through Gumbel-sigmoid
  estimator (hard 0/1 forward, relaxed gradient backward), as SAMS-VAE and sVAE+ do.
* :class:`Horseshoe` — a continuous shrinkage prior
  ``e_tk ~ N(0, (tau * lambda_tk)^2)``, ``lambda ~ HalfCauchy(1)``, ``tau ~ HalfCauchy(tau0)``;
  ``s_t = e_t``.

Both report :meth:`mask_probability` from fitted parameters, so downstream plots and metrics
do not care which one was used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import lax
from numpyro.distributions import constraints
from numpyro.distributions.kl import kl_divergence

from .._errors import CausalZooError

__all__ = [
    "StraightThroughBernoulli",
    "SparsityPrior",
    "BernoulliMask",
    "Horseshoe",
    "get_sparsity_prior",
]


class StraightThroughBernoulli(dist.Distribution):
    """Bernoulli whose samples are hard 0/1 with relaxed (Gumbel-sigmoid) gradients.

    ``log_prob`` is the Bernoulli log-mass of the hard value, so the ELBO's KL term is the
    discrete one; ``sample`` is differentiable with respect to ``logits`` through the relaxed
    sample (straight-through estimator, Bengio et al. 2013; Jang et al. 2017).
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.boolean
    has_rsample = True
    reparametrized_params = ["logits"]

    def __init__(self, logits, temperature: float = 0.5, *, validate_args=None):
        self.logits = logits
        self.temperature = temperature
        super().__init__(batch_shape=jnp.shape(logits), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        u = jax.random.uniform(key, shape, minval=1e-6, maxval=1.0 - 1e-6)
        relaxed = jax.nn.sigmoid((self.logits + jnp.log(u) - jnp.log1p(-u)) / self.temperature)
        hard = (relaxed > 0.5).astype(relaxed.dtype)
        # relaxed - stop_gradient(relaxed) is exactly 0 forward: the value stays a hard 0/1.
        return hard + (relaxed - lax.stop_gradient(relaxed))

    def rsample(self, key, sample_shape=()):
        return self.sample(key, sample_shape)

    def log_prob(self, value):
        return value * jax.nn.log_sigmoid(self.logits) + (1.0 - value) * jax.nn.log_sigmoid(
            -self.logits
        )

    @property
    def mean(self):
        return jax.nn.sigmoid(self.logits)

    @property
    def variance(self):
        p = jax.nn.sigmoid(self.logits)
        return p * (1.0 - p)


@kl_divergence.register(StraightThroughBernoulli, dist.BernoulliProbs)
def _kl_straight_through_bernoulli(q, p):
    """Analytic ``KL(q || p)`` of the mask, so mean-field ELBOs get its exact gradient."""
    log_q1, log_q0 = jax.nn.log_sigmoid(q.logits), jax.nn.log_sigmoid(-q.logits)
    q1 = jnp.exp(log_q1)
    probs = jnp.clip(p.probs, 1e-7, 1 - 1e-7)
    return q1 * (log_q1 - jnp.log(probs)) + (1 - q1) * (log_q0 - jnp.log1p(-probs))


@dataclass(frozen=True)
class SparsityPrior:
    """Base class of the sparsity blocks. Subclasses implement ``model``, ``guide`` and
    ``mask_probability``. ``model(T, K)`` returns the shifts, shape ``(T, K)``; per-perturbation
    sites live in a ``perturbations`` plate of size ``T``."""

    name: ClassVar[str] = "base"

    def model(self, n_perturbations: int, n_latent: int):  # pragma: no cover - interface
        raise NotImplementedError

    def guide(self, n_perturbations: int, n_latent: int):  # pragma: no cover - interface
        """Declare the variational factors and return the guide's draw of the shifts."""
        raise NotImplementedError

    def mask_probability(self, params):  # pragma: no cover - interface
        raise NotImplementedError

    def effect_mean(self, params):
        """Posterior mean of the effect sizes ``e`` from fitted guide parameters."""
        return params["effect_loc"]


@dataclass(frozen=True)
class BernoulliMask(SparsityPrior):
    """Bernoulli mask times Gaussian effect (SAMS-VAE / PerturbedVAE style).

    Parameters
    ----------
    probability : float
        Prior probability that a perturbation targets a latent (SAMS-VAE uses 0.01 on 200
        latents; with a handful of response latents 0.1-0.3 is sensible).
    effect_scale : float
        Prior standard deviation of the effects ``e_tk``.
    temperature : float
        Temperature of the relaxed sample used for the straight-through gradient.
    """

    name: ClassVar[str] = "bernoulli"
    probability: float = 0.2
    effect_scale: float = 1.0
    temperature: float = 0.5

    def __post_init__(self):
        if not 0.0 < self.probability < 1.0:
            raise CausalZooError(
                f"mask probability must lie in (0, 1); got {self.probability!r}."
            )
        if self.effect_scale <= 0 or self.temperature <= 0:
            raise CausalZooError("effect_scale and temperature must be > 0.")

    def model(self, n_perturbations, n_latent):
        with numpyro.plate("perturbations", n_perturbations):
            effect = numpyro.sample(
                "effect", dist.Normal(0.0, self.effect_scale).expand([n_latent]).to_event(1)
            )
            mask = numpyro.sample(
                "mask", dist.Bernoulli(probs=jnp.full((n_latent,), self.probability)).to_event(1)
            )
        return mask * effect

    def guide(self, n_perturbations, n_latent):
        shape = (n_perturbations, n_latent)
        loc = numpyro.param("effect_loc", jnp.zeros(shape))
        log_scale = numpyro.param("effect_log_scale", jnp.full(shape, -2.0))
        # Start at the prior: masks switch on where the data ask for it, rather than
        # starting dense and having to be pruned against a weak KL gradient.
        prior_logit = math.log(self.probability) - math.log1p(-self.probability)
        logits = numpyro.param("mask_logits", jnp.full(shape, prior_logit))
        with numpyro.plate("perturbations", n_perturbations):
            effect = numpyro.sample("effect", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))
            mask = numpyro.sample(
                "mask", StraightThroughBernoulli(logits, self.temperature).to_event(1)
            )
        return mask * effect

    def mask_probability(self, params):
        return jax.nn.sigmoid(params["mask_logits"])


@dataclass(frozen=True)
class Horseshoe(SparsityPrior):
    """Horseshoe prior on the shifts (no discrete mask).

    ``tau ~ HalfCauchy(global_scale)``, ``lambda_tk ~ HalfCauchy(1)``,
    ``e_tk ~ N(0, (tau lambda_tk)^2)``, ``s_t = e_t``. The reported mask probability is
    ``1 - kappa_tk`` with the shrinkage factor ``kappa = 1 / (1 + tau^2 lambda^2)`` at the
    posterior medians: close to 1 where a shift escapes shrinkage.
    """

    name: ClassVar[str] = "horseshoe"
    global_scale: float = 0.1

    def __post_init__(self):
        if self.global_scale <= 0:
            raise CausalZooError(f"global_scale must be > 0; got {self.global_scale!r}.")

    def model(self, n_perturbations, n_latent):
        tau = numpyro.sample("global_shrinkage", dist.HalfCauchy(self.global_scale))
        with numpyro.plate("perturbations", n_perturbations):
            local = numpyro.sample(
                "local_shrinkage", dist.HalfCauchy(1.0).expand([n_latent]).to_event(1)
            )
            return numpyro.sample("effect", dist.Normal(0.0, tau * local).to_event(1))

    def guide(self, n_perturbations, n_latent):
        shape = (n_perturbations, n_latent)
        tau_loc = numpyro.param("global_shrinkage_loc", jnp.log(self.global_scale))
        tau_log_scale = numpyro.param("global_shrinkage_log_scale", -2.0)
        numpyro.sample("global_shrinkage", dist.LogNormal(tau_loc, jnp.exp(tau_log_scale)))
        local_loc = numpyro.param("local_shrinkage_loc", jnp.zeros(shape))
        local_log_scale = numpyro.param("local_shrinkage_log_scale", jnp.full(shape, -2.0))
        loc = numpyro.param("effect_loc", jnp.zeros(shape))
        log_scale = numpyro.param("effect_log_scale", jnp.full(shape, -2.0))
        with numpyro.plate("perturbations", n_perturbations):
            numpyro.sample(
                "local_shrinkage",
                dist.LogNormal(local_loc, jnp.exp(local_log_scale)).to_event(1),
            )
            return numpyro.sample("effect", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))

    def mask_probability(self, params):
        tau = jnp.exp(params["global_shrinkage_loc"])
        local = jnp.exp(params["local_shrinkage_loc"])
        return 1.0 - 1.0 / (1.0 + (tau * local) ** 2)


def get_sparsity_prior(sparsity: str | SparsityPrior, **kwargs) -> SparsityPrior:
    """A sparsity block from its name (``"bernoulli"`` or ``"horseshoe"``) or an instance."""
    if isinstance(sparsity, SparsityPrior):
        return sparsity
    table = {"bernoulli": BernoulliMask, "horseshoe": Horseshoe}
    if isinstance(sparsity, str) and sparsity.lower() in table:
        return table[sparsity.lower()](**kwargs)
    raise CausalZooError(
        f"Unknown sparsity prior {sparsity!r}. Use 'bernoulli', 'horseshoe', or an instance of "
        "causalzoo.blocks.priors.SparsityPrior."
    )
