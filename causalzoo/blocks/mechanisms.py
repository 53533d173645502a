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

from dataclasses import dataclass

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.linalg import solve_triangular

from .._errors import CausalZooError

__all__ = ["additive_shift", "LinearGaussianSCM", "weights_from_lower"]


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
        ``sigma``: exogenous noise scale; fixed, as it sets the scale of ``z_resp``.

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

    def guide(self, n_latent: int, n_invariant: int):
        """Point estimates (``Delta``) for the sites of :meth:`model`."""
        n_w = self.n_weights(n_latent)
        if n_w:
            value = numpyro.param("scm_weights_map", jnp.zeros(n_w))
            numpyro.sample("scm_weights", dist.Delta(value).to_event(1))
        if self.couple_invariant and n_invariant:
            value = numpyro.param("invariant_coupling_map", jnp.zeros((n_latent, n_invariant)))
            numpyro.sample("invariant_coupling", dist.Delta(value).to_event(2))

    def distribution(self, mean, weights):
        """``p(z_resp | mean)`` for the exogenous mean ``B z_inv + D S``: a multivariate
        normal with loc ``(I - W)^{-1} mean`` and scale ``(I - W)^{-1} sigma``."""
        n_latent = weights.shape[-1]
        eye = jnp.eye(n_latent, dtype=mean.dtype)
        total_effect = solve_triangular(eye - weights, eye, lower=True, unit_diagonal=True)
        return dist.MultivariateNormal(
            mean @ total_effect.T, scale_tril=total_effect * self.noise_scale
        )
