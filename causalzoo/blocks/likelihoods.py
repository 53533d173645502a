"""Observation models for expression data: NB, ZINB, Poisson and Gaussian.

Each likelihood turns a decoder's output (one or two numbers per gene) and the cells' library
sizes into a NumPyro distribution over a cell's expression vector. Gene-wise parameters
(dispersions, noise scales) are declared with :func:`numpyro.param` when the likelihood is
called inside a model, so swapping the likelihood of a zoo model is one argument.

The count log-densities are written out in log space (log-softmax rates, ``softplus`` of
``log(mu / theta)`` for ``log(1 + mu / theta)``) rather than through NumPyro's Gamma-Poisson,
because on these models the NB log-density costs as much as the networks (see
``docs/performance.md``). The NB log-density has a hand-written derivative
(:func:`jax.custom_jvp`) and, in single precision, its own ``lgamma``/``digamma`` for positive
arguments; values and derivatives are checked against SciPy and float64 autodiff of NumPyro's
``NegativeBinomial2`` in ``tests/blocks/test_nb_log_prob.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.custom_derivatives import SymbolicZero
from jax.scipy.special import digamma, gammaln
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


# ------------------------------------------------------------------ NB log-density
#
# Why not ``jax.scipy.special.gammaln``/``digamma`` and plain autodiff: on the zoo's VAEs the
# NB term runs on every cell x gene entry of a minibatch and took 63-76% of an SVI step on CPU
# (docs/performance.md). XLA's ``lgamma`` and ``digamma`` are Lanczos sums (8 divisions each)
# plus a reflection branch for arguments below 1/2 (``sin``/``tan``, another ``log``) that is
# computed for every element although ``x + theta > 0`` never needs it; the old expression
# also evaluated the gene-wise ``lgamma(theta)`` on the broadcast B x G array, and its autodiff
# kept several B x G intermediates for the backward pass. Here the three ``lgamma`` terms are
# evaluated together from one shift-and-Stirling expansion (a few logs and divisions per
# entry), gene-wise terms on the genes only, and the derivative is written out, so the
# backward pass reads just the two B x G partial derivatives.
#
# Grouping the three Stirling series also removes the cancellation of the naive difference
# ``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)`` at large counts or large theta (two
# numbers of ~1e6 whose difference is ~10): the large parts are combined as ``log1p`` of
# ratios, so the result is closer to a float64 reference than the naive float32 formula.

_SHIFT = 5
"""Arguments below this are shifted up by it, ``lgamma(z) = lgamma(z + 5) - log(z (z+1) ...
(z+4))``: the Stirling series below is then accurate to ~2e-9 relative (truncation
``1/(1680 w^7)`` at ``w = 5`` for ``lgamma``, ``1/(240 w^8)`` for ``digamma``), well inside
float32's 1.2e-7."""
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _shift_up(z, *, with_derivative):
    """``(w, shift, log P, P'/P)`` with ``w = z + shift`` >= 5 and ``P = z (z+1) ... (z+4)``
    where ``z < 5`` (``shift = 5``), ``P = 1`` elsewhere (``shift = 0``).

    ``P'/P = sum 1/(z + k)`` is built by the product rule with multiplications and one division.
    Where no shift is needed the product is evaluated at 1 (both sides of a ``where`` are
    computed) so that it stays finite for any ``z``.
    """
    small = z < _SHIFT
    zs = jnp.where(small, z, 1.0)
    prod, dprod = zs, jnp.ones_like(zs)
    for k in range(1, _SHIFT):
        if with_derivative:
            dprod = dprod * (zs + k) + prod
        prod = prod * (zs + k)
    shift = jnp.where(small, float(_SHIFT), 0.0)
    log_p = jnp.where(small, jnp.log(prod), 0.0)
    dlog_p = jnp.where(small, dprod / prod, 0.0) if with_derivative else None
    return z + shift, shift, log_p, dlog_p


def _stirling_tail(inv_w):
    """``lgamma(w) - ((w - 1/2) log w - w + log(2 pi)/2)`` for ``w >= 5``."""
    inv_w2 = inv_w * inv_w
    return inv_w * (1.0 / 12.0 - inv_w2 * (1.0 / 360.0 - inv_w2 * (1.0 / 1260.0)))


def _digamma_tail(inv_w):
    """``digamma(w) - log w`` for ``w >= 5``."""
    inv_w2 = inv_w * inv_w
    return -0.5 * inv_w - inv_w2 * (1.0 / 12.0 - inv_w2 * (1.0 / 120.0 - inv_w2 * (1.0 / 252.0)))


def _log_binomial_terms(value, theta, *, derivatives):
    """``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)`` and, if asked,
    ``digamma(x + theta) - digamma(theta)``, for ``x >= 0``, ``theta > 0``.

    Float32: with ``a = theta``, ``b = x + theta``, ``c = x + 1`` shifted to ``w_a, w_b, w_c``
    >= 5, ``w_b - w_a - w_c = k`` is a small integer, so the Stirling sum
    ``S(w_b) - S(w_a) - S(w_c)``, ``S(w) = (w - 1/2) log w - w + log(2 pi)/2 + tail(w)``, is
    ``(w_a - 1/2) log(w_b/w_a) + (w_c - 1/2) log(w_b/w_c) + (k + 1/2) log w_b - k
    - log(2 pi)/2 + tails`` with the two ratios taken as ``log1p`` of small exact differences.
    Float64 goes to ``jax.scipy.special`` (the series stops at float32 accuracy).
    """
    if jnp.result_type(value, theta) == jnp.float64:
        x_theta = value + theta
        lbin = gammaln(x_theta) - gammaln(theta) - gammaln(value + 1.0)
        return lbin, (digamma(x_theta) - digamma(theta) if derivatives else None)
    w_a, s_a, log_p_a, dlog_p_a = _shift_up(theta, with_derivative=derivatives)
    inv_w_a = 1.0 / w_a  # gene-wise: one division per gene
    w_b, s_b, log_p_b, dlog_p_b = _shift_up(value + theta, with_derivative=derivatives)
    w_c, s_c, log_p_c, _ = _shift_up(value + 1.0, with_derivative=False)
    inv_w_b = 1.0 / w_b
    inv_w_c = 1.0 / w_c
    k = s_b - s_a - s_c - 1.0
    log_b_over_a = jnp.log1p((value + (s_b - s_a)) * inv_w_a)
    log_b_over_c = jnp.log1p((theta - 1.0 + (s_b - s_c)) * inv_w_c)
    lbin = (
        (w_a - 0.5) * log_b_over_a
        + (w_c - 0.5) * log_b_over_c
        + (k + 0.5) * jnp.log(w_b)
        - k
        - _HALF_LOG_2PI
        + _stirling_tail(inv_w_b)
        - _stirling_tail(inv_w_a)
        - _stirling_tail(inv_w_c)
        - log_p_b
        + log_p_a
        + log_p_c
    )
    if not derivatives:
        return lbin, None
    dpsi = (
        log_b_over_a
        + _digamma_tail(inv_w_b)
        - _digamma_tail(inv_w_a)
        - dlog_p_b
        + dlog_p_a
    )
    return lbin, dpsi


def _nb_terms(value, log_mean, log_concentration, *, derivatives):
    """NB log-density and, if asked, its partial derivatives in log mean and log theta.

    With ``d = log(mu / theta)``, ``L = log1p(exp(-|d|))``, ``softplus(+-d) = relu(+-d) + L``:

    ``log p = lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)
    - theta * softplus(d) - x * softplus(-d)``

    (that is ``+ theta * log(theta / (theta + mu)) + x * log(mu / (theta + mu))``), and

    ``d/d log_mean = x * sigmoid(-d) - theta * sigmoid(d)``,
    ``d/d log_theta = theta * (digamma(x + theta) - digamma(theta) - softplus(d) + sigmoid(d))
    - x * sigmoid(-d)``.

    ``theta`` and its own ``lgamma``/``digamma`` parts are computed on
    ``log_concentration``'s shape (the genes), before broadcasting.
    """
    theta = jnp.exp(log_concentration)
    lbin, dpsi = _log_binomial_terms(value, theta, derivatives=derivatives)
    d = log_mean - log_concentration
    e = jnp.exp(-jnp.abs(d))
    log1p_e = jnp.log1p(e)
    softplus_d = jnp.maximum(d, 0.0) + log1p_e
    softplus_neg_d = jnp.maximum(-d, 0.0) + log1p_e
    log_prob = lbin - theta * softplus_d - value * softplus_neg_d
    if not derivatives:
        return log_prob, None, None
    inv = 1.0 / (1.0 + e)
    positive = d >= 0
    sigmoid_d = jnp.where(positive, inv, e * inv)
    sigmoid_neg_d = jnp.where(positive, e * inv, inv)
    d_mean = value * sigmoid_neg_d - theta * sigmoid_d
    d_conc = theta * (dpsi - softplus_d + sigmoid_d) - value * sigmoid_neg_d
    return log_prob, d_mean, d_conc


@jax.custom_jvp
def _nb_log_prob(value, log_mean, log_concentration):
    """NB log-density at counts ``value`` (broadcasts its three arguments)."""
    return _nb_terms(value, log_mean, log_concentration, derivatives=False)[0]


def _nb_log_prob_jvp(primals, tangents):
    value, log_mean, log_concentration = primals
    value_dot, mean_dot, conc_dot = tangents
    log_prob, d_mean, d_conc = _nb_terms(value, log_mean, log_concentration, derivatives=True)
    tangent = jnp.zeros_like(log_prob)
    if not isinstance(mean_dot, SymbolicZero):
        tangent = tangent + d_mean * mean_dot
    if not isinstance(conc_dot, SymbolicZero):
        tangent = tangent + d_conc * conc_dot
    if not isinstance(value_dot, SymbolicZero):
        # Counts are data, but the density is smooth in a real x: keep its derivative exact
        # rather than silently zero. Paid for only when someone asks for it.
        theta = jnp.exp(log_concentration)
        d_value = (digamma(value + theta) - digamma(value + 1.0)
                   - jnp.logaddexp(0.0, log_concentration - log_mean))
        tangent = tangent + d_value * value_dot
    return log_prob, tangent


_nb_log_prob.defjvp(_nb_log_prob_jvp, symbolic_zeros=True)


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
        # The log-density uses the arguments as given: gene-wise concentration terms are then
        # computed once per gene, not once per cell x gene (XLA does not undo a broadcast).
        # Not pytree fields on purpose: a distribution flattened and rebuilt (``vmap`` over
        # it maps every leaf along one axis) falls back to the broadcast attributes.
        self._unbroadcast = (log_mean, log_concentration)
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

    def _nb_args(self):
        return self.__dict__.get("_unbroadcast") or (self.log_mean, self.log_concentration)

    def log_prob(self, value):
        return _nb_log_prob(value, *self._nb_args())

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
        nb = _nb_log_prob(value, *self._nb_args())
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
