"""Losses: the ELBO with optional terms outside it (PerturbedVAE's alignment penalty)."""

from __future__ import annotations

from numpyro.handlers import seed, substitute, trace
from numpyro.infer import TraceMeanField_ELBO

__all__ = ["AlignedELBO"]


class AlignedELBO(TraceMeanField_ELBO):
    """``-ELBO + alignment * n_cells * mean(guide's alignment site)``.

    The ELBO is NumPyro's mean-field estimator: analytic KL terms where a closed form is
    registered (Gaussian effects and ``z_inv``, the straight-through Bernoulli masks of
    :mod:`causalzoo.blocks.priors`), Monte Carlo elsewhere (``z_resp`` against the SCM's
    multivariate normal, point-estimated weights).

    The guide records a per-cell deterministic site (``"alignment_distance"`` in the sparse
    perturbation guide); this loss reads it from a trace of the guide with the same parameters
    and adds it, scaled to the whole data set like the ELBO's cell terms. With
    ``alignment=0`` it is exactly :class:`numpyro.infer.TraceMeanField_ELBO`.

    ``can_infer_discrete`` is ``True`` because the zoo's only discrete latents (sparse masks)
    are sampled with straight-through estimators in the guide, which makes them
    reparameterised; NumPyro's warning about discrete latents does not apply.

    Parameters
    ----------
    alignment : float
        Weight ``alpha`` of the term.
    site : str
        Name of the guide's deterministic site holding the per-cell distances.
    num_particles : int
        Particles of the ELBO estimate.

    Examples
    --------
    >>> loss = AlignedELBO(alignment=0.05)
    >>> loss.alignment
    0.05
    """

    can_infer_discrete = True

    def __init__(self, alignment: float = 0.0, *, site: str = "alignment_distance",
                 num_particles: int = 1):
        super().__init__(num_particles=num_particles)
        self.alignment = float(alignment)
        self.site = site

    def _has_penalty(self) -> bool:
        """Whether any term outside the ELBO is on (then the guide is traced once more)."""
        return bool(self.alignment)

    def _penalty(self, guide_trace, kwargs):
        """The terms outside the ELBO, read from one trace of the guide; a subclass adds its
        own terms to ``super()._penalty(...)`` so the guide is traced once for all."""
        if not self.alignment or self.site not in guide_trace:
            return 0.0
        distance = guide_trace[self.site]["value"]
        n_cells = kwargs.get("n_cells") or distance.shape[0]
        return self.alignment * n_cells * distance.mean()

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        out = super().loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)
        if self._has_penalty():
            tr = trace(substitute(seed(guide, rng_key), data=param_map)).get_trace(
                *args, **kwargs
            )
            out = dict(out)
            out["loss"] = out["loss"] + self._penalty(tr, kwargs)
        return out

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs):
        return self.loss_with_mutable_state(
            rng_key, param_map, model, guide, *args, **kwargs
        )["loss"]
