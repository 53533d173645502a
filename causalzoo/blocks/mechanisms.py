"""Latent mechanisms: additive perturbation shifts and the linear-Gaussian latent SCM.

The response block of the sparse perturbation model is a linear-Gaussian structural causal
model over ``K`` response variables,

    z_resp = W z_resp + B z_inv + sum_t d_t s_t + eps,   eps ~ N(0, diag(sigma^2)),

i.e. ``z_resp = (I - W)^{-1} (B z_inv + D S + eps)``. With ``W`` strictly lower-triangular
(a DAG in a fixed causal order) ``I - W`` is unit lower-triangular, so the implied
distribution is a multivariate normal with ``scale_tril = (I - W)^{-1} diag(sigma)`` and no
matrix inverse beyond one triangular solve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.linalg import solve_triangular
from numpyro.distributions import constraints

from .._errors import CausalZooError

__all__ = ["additive_shift", "LinearGaussianSCM", "LinearSCMNormal", "weights_from_lower"]


def additive_shift(design, shifts):
    """Compose per-perturbation shifts additively: ``design @ shifts``.

    ``design`` is ``(cells, T)`` multi-hot (a combination "A+B" sets two entries) and
    ``shifts`` is ``(T, K)``.
    """
    return design @ shifts


def weights_from_lower(entries, n_latent: int):
    """Fill a strictly lower-triangular ``(K, K)`` matrix from its ``K(K-1)/2`` entries."""
    rows, cols = jnp.tril_indices(n_latent, -1)
    return jnp.zeros((n_latent, n_latent), entries.dtype).at[rows, cols].set(entries)


@dataclass(frozen=True)
class LinearGaussianSCM:
    """Linear-Gaussian SCM over the response latents.

    Parameters
    ----------
    graph : {"lower_triangular", "none"}
        ``"lower_triangular"``: ``W`` strictly lower-triangular, learned (PerturbedVAE).
        ``"none"``: ``W = 0``, independent response variables (SAMS-VAE).
    couple_invariant : bool
        Learn ``B`` (the response variables' dependence on ``z_inv``); ``False`` sets
        ``B = 0``.
    weight_scale : float
        Prior standard deviation of the entries of ``W`` and ``B`` (point-estimated: MAP).
    noise_scale : float
        ``sigma``: the exogenous noise scale, or its initial value when ``learn_noise``.
    learn_noise : bool
        Learn a noise scale per response variable (a point estimate, ``numpyro.param``
        ``"response_log_noise_scale"``), so that the within-condition spread of ``z_resp``
        need not equal that of ``z_inv``.

    Examples
    --------
    >>> scm = LinearGaussianSCM(graph="none", couple_invariant=False)
    >>> scm.n_weights(4)
    0
    """

    graph: str = "lower_triangular"
    couple_invariant: bool = True
    weight_scale: float = 1.0
    noise_scale: float = 1.0
    learn_noise: bool = False

    def __post_init__(self):
        if self.graph not in ("lower_triangular", "none"):
            raise CausalZooError(
                f"Unknown SCM graph {self.graph!r}: use 'lower_triangular' (learned DAG in a "
                "fixed order) or 'none' (W = 0, the SAMS-VAE configuration)."
            )
        if self.weight_scale <= 0 or self.noise_scale <= 0:
            raise CausalZooError("weight_scale and noise_scale must be > 0.")

    def n_weights(self, n_latent: int) -> int:
        """Number of free entries of ``W``."""
        return n_latent * (n_latent - 1) // 2 if self.graph == "lower_triangular" else 0

    def model(self, n_latent: int, n_invariant: int):
        """Declare the SCM's weight sites; return ``(W, B)`` (zeros where switched off)."""
        n_w = self.n_weights(n_latent)
        if n_w:
            entries = numpyro.sample(
                "scm_weights", dist.Normal(0.0, self.weight_scale).expand([n_w]).to_event(1)
            )
            weights = weights_from_lower(entries, n_latent)
        else:
            weights = jnp.zeros((n_latent, n_latent))
        if self.couple_invariant and n_invariant:
            coupling = numpyro.sample(
                "invariant_coupling",
                dist.Normal(0.0, self.weight_scale).expand([n_latent, n_invariant]).to_event(2),
            )
        else:
            coupling = jnp.zeros((n_latent, n_invariant))
        return weights, coupling

    def noise(self, n_latent: int):
        """The exogenous noise scale(s): a learned per-variable parameter or the constant."""
        if not self.learn_noise:
            return self.noise_scale
        return jnp.exp(
            numpyro.param(
                "response_log_noise_scale", jnp.full((n_latent,), math.log(self.noise_scale))
            )
        )

    def guide(self, n_latent: int, n_invariant: int):
        """Point estimates (``Delta``) for the sites of :meth:`model`; returns ``(W, B)``."""
        n_w = self.n_weights(n_latent)
        weights = jnp.zeros((n_latent, n_latent))
        coupling = jnp.zeros((n_latent, n_invariant))
        if n_w:
            value = numpyro.param("scm_weights_map", jnp.zeros(n_w))
            entries = numpyro.sample("scm_weights", dist.Delta(value).to_event(1))
            weights = weights_from_lower(entries, n_latent)
        if self.couple_invariant and n_invariant:
            value = numpyro.param("invariant_coupling_map", jnp.zeros((n_latent, n_invariant)))
            coupling = numpyro.sample("invariant_coupling", dist.Delta(value).to_event(2))
        return weights, coupling

    @staticmethod
    def total_effect(weights):
        """``(I - W)^{-1}``, by one unit-lower-triangular solve."""
        eye = jnp.eye(weights.shape[-1], dtype=weights.dtype)
        return solve_triangular(eye - weights, eye, lower=True, unit_diagonal=True)

    def mean(self, exogenous, weights):
        """``(I - W)^{-1} exogenous``: the response latents' mean given their exogenous mean."""
        return exogenous @ self.total_effect(weights).T

    def distribution(self, mean, weights, noise_scale=None):
        """``p(z_resp | mean)`` for the exogenous mean ``B z_inv + D S``: the multivariate
        normal with loc ``(I - W)^{-1} mean`` and scale ``(I - W)^{-1} diag(sigma)``, as a
        :class:`LinearSCMNormal` (``sigma`` defaults to ``noise_scale``)."""
        return LinearSCMNormal(
            mean, weights, self.noise_scale if noise_scale is None else noise_scale
        )


class LinearSCMNormal(dist.Distribution):
    """``z = (I - W)^{-1} (exogenous + eps)``, ``eps ~ N(0, diag(sigma^2))``, ``W`` strictly
    lower triangular.

    The density is evaluated through the noise, ``eps = (I - W) z - exogenous``, whose
    Jacobian has determinant 1: ``log p(z) = sum_k log N(eps_k; 0, sigma)``. No triangular
    solve is needed to score a value (the multivariate-normal form needs one per call);
    sampling does one solve.
    """

    arg_constraints = {"exogenous": constraints.real_vector}
    support = constraints.real_vector
    reparametrized_params = ["exogenous"]
    pytree_data_fields = ("exogenous", "weights", "noise_scale")

    def __init__(self, exogenous, weights, noise_scale=1.0, *, validate_args=None):
        self.exogenous = exogenous
        self.weights = weights
        self.noise_scale = noise_scale
        super().__init__(
            batch_shape=jnp.shape(exogenous)[:-1],
            event_shape=jnp.shape(exogenous)[-1:],
            validate_args=validate_args,
        )

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape + self.event_shape
        eps = self.noise_scale * jax.random.normal(key, shape)
        return (self.exogenous + eps) @ LinearGaussianSCM.total_effect(self.weights).T

    def log_prob(self, value):
        eps = value - value @ self.weights.T - self.exogenous
        return jnp.sum(dist.Normal(0.0, self.noise_scale).log_prob(eps), axis=-1)

    @property
    def mean(self):
        return self.exogenous @ LinearGaussianSCM.total_effect(self.weights).T

    @property
    def variance(self):
        return jnp.broadcast_to(
            jnp.diagonal(self.covariance_matrix), self.batch_shape + self.event_shape
        )

    @property
    def covariance_matrix(self):
        total = LinearGaussianSCM.total_effect(self.weights) * self.noise_scale
        return total @ total.T
