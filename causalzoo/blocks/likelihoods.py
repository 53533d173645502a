"""Observation models for expression data: NB, ZINB, Poisson and Gaussian.

Each likelihood turns a decoder's output (one or two numbers per gene) and the cells' library
sizes into a NumPyro distribution over a cell's expression vector. Gene-wise parameters
(dispersions, noise scales) are declared with :func:`numpyro.param` when the likelihood is
called inside a model, so swapping the likelihood of a zoo model is one argument.

The count log-densities are written out in log space (log-softmax rates, ``logaddexp`` for
``log(theta + mu)``) rather than through NumPyro's Gamma-Poisson, because on these models the
NB log-density costs as much as the networks (see ``benchmarks/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import gammaln
from numpyro.distributions import constraints

from .._errors import CausalZooError

__all__ = [
    "NegativeBinomialLog",
    "ZeroInflatedNegativeBinomialLog",
    "PoissonLog",
    "Likelihood",
    "NB",
    "ZINB",
    "Poisson",
    "Gaussian",
    "get_likelihood",
    "LIKELIHOODS",
]


def _nb_log_prob(value, log_mean, log_concentration):
    theta = jnp.exp(log_concentration)
    log_theta_mu = jnp.logaddexp(log_concentration, log_mean)
    return (
        gammaln(value + theta)
        - gammaln(theta)
        - gammaln(value + 1.0)
        + theta * (log_concentration - log_theta_mu)
        + value * (log_mean - log_theta_mu)
    )


class NegativeBinomialLog(dist.Distribution):
    """Negative binomial parameterised by log mean and log concentration (inverse dispersion).

    ``Var = mu + mu**2 / theta``. Sampling goes through the Gamma-Poisson mixture.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> d = NegativeBinomialLog(jnp.log(jnp.array([2.0])), jnp.log(jnp.array([10.0])))
    >>> float(d.mean[0])
    2.0
    """

    arg_constraints = {"log_mean": constraints.real, "log_concentration": constraints.real}
    support = constraints.nonnegative_integer
    is_discrete = True

    def __init__(self, log_mean, log_concentration, *, validate_args=None):
        self.log_mean, self.log_concentration = jnp.broadcast_arrays(
            log_mean, log_concentration
        )
        super().__init__(batch_shape=jnp.shape(self.log_mean), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        key_gamma, key_poisson = jax.random.split(key)
        theta = jnp.exp(self.log_concentration)
        rate = jax.random.gamma(key_gamma, jnp.broadcast_to(theta, shape)) * jnp.exp(
            self.log_mean - self.log_concentration
        )
        return jax.random.poisson(key_poisson, rate, shape).astype(jnp.float32)

    def log_prob(self, value):
        return _nb_log_prob(value, self.log_mean, self.log_concentration)

    @property
    def mean(self):
        return jnp.exp(self.log_mean)

    @property
    def variance(self):
        mu = jnp.exp(self.log_mean)
        return mu + mu**2 / jnp.exp(self.log_concentration)


class ZeroInflatedNegativeBinomialLog(NegativeBinomialLog):
    """NB with a structural-zero gate, ``P(structural zero) = sigmoid(gate_logits)``."""

    arg_constraints = {
        "log_mean": constraints.real,
        "log_concentration": constraints.real,
        "gate_logits": constraints.real,
    }

    def __init__(self, log_mean, log_concentration, gate_logits, *, validate_args=None):
        self.gate_logits = jnp.broadcast_to(
            gate_logits, jnp.broadcast_shapes(jnp.shape(log_mean), jnp.shape(gate_logits))
        )
        super().__init__(log_mean, log_concentration, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        key_nb, key_gate = jax.random.split(key)
        counts = super().sample(key_nb, sample_shape)
        zero = jax.random.bernoulli(
            key_gate, jax.nn.sigmoid(self.gate_logits), sample_shape + self.batch_shape
        )
        return jnp.where(zero, 0.0, counts)

    def log_prob(self, value):
        nb = _nb_log_prob(value, self.log_mean, self.log_concentration)
        log_gate = jax.nn.log_sigmoid(self.gate_logits)
        log_keep = jax.nn.log_sigmoid(-self.gate_logits)
        return jnp.where(value == 0, jnp.logaddexp(log_gate, log_keep + nb), log_keep + nb)

    @property
    def mean(self):
        return jax.nn.sigmoid(-self.gate_logits) * jnp.exp(self.log_mean)

    @property
    def variance(self):
        keep = jax.nn.sigmoid(-self.gate_logits)
        nb_mean = jnp.exp(self.log_mean)
        nb_second = super().variance + nb_mean**2
        return keep * nb_second - (keep * nb_mean) ** 2


class PoissonLog(dist.Distribution):
    """Poisson parameterised by its log rate."""

    arg_constraints = {"log_rate": constraints.real}
    support = constraints.nonnegative_integer
    is_discrete = True

    def __init__(self, log_rate, *, validate_args=None):
        self.log_rate = log_rate
        super().__init__(batch_shape=jnp.shape(log_rate), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        return jax.random.poisson(key, jnp.exp(self.log_rate), shape).astype(jnp.float32)

    def log_prob(self, value):
        return value * self.log_rate - jnp.exp(self.log_rate) - gammaln(value + 1.0)

    @property
    def mean(self):
        return jnp.exp(self.log_rate)

    @property
    def variance(self):
        return jnp.exp(self.log_rate)


@dataclass(frozen=True)
class Likelihood:
    """Base class: maps decoder output to a distribution over a cell's genes.

    Subclasses set ``name``, ``n_outputs`` (decoder outputs per gene), ``count_data`` and
    ``uses_library`` and implement :meth:`__call__`. Call it inside a model: gene-wise
    parameters are registered there with :func:`numpyro.param`.
    """

    name: ClassVar[str] = "base"
    n_outputs: ClassVar[int] = 1
    count_data: ClassVar[bool] = True
    uses_library: ClassVar[bool] = True

    def __call__(self, decoder_out, library_size):  # pragma: no cover - interface
        raise NotImplementedError

    def split(self, decoder_out):
        """Split a decoder output of width ``n_outputs * G`` into ``n_outputs`` arrays."""
        return jnp.split(decoder_out, self.n_outputs, axis=-1)

    @staticmethod
    def _log_rate(logits, library_size):
        return jax.nn.log_softmax(logits, axis=-1) + jnp.log(library_size)[..., None]


@dataclass(frozen=True)
class NB(Likelihood):
    """Negative binomial with gene-wise inverse dispersion ``theta_g`` and library size.

    ``x_ng ~ NB(mean = l_n * softmax(f(z_n))_g, concentration = theta_g)``.
    """

    name: ClassVar[str] = "nb"

    def __call__(self, decoder_out, library_size):
        n_genes = decoder_out.shape[-1] // self.n_outputs
        log_theta = numpyro.param("log_inverse_dispersion", jnp.full((n_genes,), 2.0))
        (logits,) = self.split(decoder_out)
        return NegativeBinomialLog(self._log_rate(logits, library_size), log_theta)


@dataclass(frozen=True)
class ZINB(Likelihood):
    """Zero-inflated NB; the decoder gives a per-cell, per-gene gate logit as well."""

    name: ClassVar[str] = "zinb"
    n_outputs: ClassVar[int] = 2

    def __call__(self, decoder_out, library_size):
        n_genes = decoder_out.shape[-1] // self.n_outputs
        log_theta = numpyro.param("log_inverse_dispersion", jnp.full((n_genes,), 2.0))
        logits, gate = self.split(decoder_out)
        return ZeroInflatedNegativeBinomialLog(
            self._log_rate(logits, library_size), log_theta, gate - 2.0
        )


@dataclass(frozen=True)
class Poisson(Likelihood):
    """Poisson with library size: ``x_ng ~ Poisson(l_n * softmax(f(z_n))_g)``."""

    name: ClassVar[str] = "poisson"

    def __call__(self, decoder_out, library_size):
        (logits,) = self.split(decoder_out)
        return PoissonLog(self._log_rate(logits, library_size))


@dataclass(frozen=True)
class Gaussian(Likelihood):
    """Gaussian on log-normalised (or otherwise continuous) data, gene-wise noise scale.

    The library size is not used: normalise first (``scanpy.pp.normalize_total`` and
    ``scanpy.pp.log1p``).
    """

    name: ClassVar[str] = "gaussian"
    count_data: ClassVar[bool] = False
    uses_library: ClassVar[bool] = False

    def __call__(self, decoder_out, library_size):
        n_genes = decoder_out.shape[-1] // self.n_outputs
        log_scale = numpyro.param("log_noise_scale", jnp.full((n_genes,), -1.0))
        (loc,) = self.split(decoder_out)
        return dist.Normal(loc, jnp.exp(log_scale))


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (NB, ZINB, Poisson, Gaussian)
}


def get_likelihood(likelihood: str | Likelihood) -> Likelihood:
    """Return a likelihood block from its name (``"nb"``, ``"zinb"``, ``"poisson"``,
    ``"gaussian"``) or pass an instance through.

    Examples
    --------
    >>> get_likelihood("nb").name
    'nb'
    """
    if isinstance(likelihood, Likelihood):
        return likelihood
    if isinstance(likelihood, str) and likelihood.lower() in LIKELIHOODS:
        return LIKELIHOODS[likelihood.lower()]()
    raise CausalZooError(
        f"Unknown likelihood {likelihood!r}. Use one of {sorted(LIKELIHOODS)} or pass an "
        "instance of causalzoo.blocks.likelihoods.Likelihood."
    )
