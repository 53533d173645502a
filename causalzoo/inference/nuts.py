"""NUTS for small models or small data, with its result as an ArviZ 1.x DataTree.

Where a model has few latents (a latent SCM on a few hundred points, a sparse perturbation
model with its decoder fixed, an iVAE prior on a toy problem), Hamiltonian Monte Carlo gives
the reference posterior that the variational one can be checked against, with the chain
diagnostics VI lacks: R-hat, bulk/tail ESS and divergences (:func:`fit_nuts`,
:meth:`NUTSResult.to_datatree`, then ``az.summary``). Discrete latents (Bernoulli masks)
are not supported by NUTS: use a continuous sparsity prior (horseshoe) or fix them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpyro.infer import MCMC, NUTS, init_to_uniform, init_to_value

from .._errors import CausalZooError, check_int
from .svi import as_key

__all__ = ["NUTSResult", "fit_nuts"]


@dataclass
class NUTSResult:
    """Draws and diagnostics of :func:`fit_nuts`.

    Attributes
    ----------
    mcmc : numpyro.infer.MCMC
        The sampler, with its extra fields (``diverging``, ``num_steps``, …).
    samples : dict
        Site name to draws of shape ``(chains, draws, ...)``.
    data, static_kwargs : dict
        What the model was conditioned on (for the log-likelihood and constant data).
    dims, coords : dict
        Dim names per site and their coordinates, used by :meth:`to_datatree`.
    constant_data : dict
        Arrays for the ``constant_data`` group (design, values held fixed such as masks).
    derived : callable, optional
        ``derived(posterior_dataset) -> {name: DataArray}``: deterministic functions of the
        draws added to ``posterior`` (e.g. ``shift = mask * effect``).
    attrs : dict
        Attributes of the DataTree's root (model, what was held fixed).
    """

    mcmc: MCMC
    samples: dict[str, np.ndarray]
    data: dict[str, Any]
    static_kwargs: dict[str, Any] = field(default_factory=dict)
    dims: dict[str, Sequence[str]] = field(default_factory=dict)
    coords: dict[str, Sequence] = field(default_factory=dict)
    constant_data: dict[str, Any] = field(default_factory=dict)
    derived: Callable | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_divergences(self) -> int:
        """The number of divergent transitions after warm-up (0 for a healthy run)."""
        return int(np.asarray(self.mcmc.get_extra_fields()["diverging"]).sum())

    def to_datatree(self, *, log_likelihood: bool = True, constant_data: Mapping | None = None):
        """The run as an ArviZ 1.x ``xarray.DataTree`` (``posterior``, ``sample_stats`` with
        ``diverging``, ``log_likelihood``, ``observed_data``), through ``az.from_numpyro``.

        ``constant_data`` is added to the result's own (:attr:`constant_data`)."""
        import arviz as az

        constant = {**self.constant_data, **dict(constant_data or {})}
        tree = az.from_numpyro(
            self.mcmc,
            log_likelihood=log_likelihood,
            coords=dict(self.coords) or None,
            dims={k: list(v) for k, v in self.dims.items()} or None,
            constant_data=constant or None,
        )
        if self.derived is not None:
            posterior = tree["posterior"].to_dataset()
            tree["posterior"] = posterior.assign(self.derived(posterior))
        tree.attrs.update(self.attrs)
        return tree


def fit_nuts(
    model: Callable,
    data: Mapping[str, Any] | None = None,
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    seed: int = 0,
    static_kwargs: Mapping[str, Any] | None = None,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Sequence] | None = None,
    progress: bool = False,
    init_values: Mapping[str, Any] | None = None,
) -> NUTSResult:
    """Sample a NumPyro model's posterior with NUTS.

    Parameters
    ----------
    model : callable
        A NumPyro model with continuous latents, called as ``model(**data,
        **static_kwargs)``.
    data : mapping
        Arrays the model is conditioned on (observations, design, covariates).
    num_warmup, num_samples, num_chains : int
        Warm-up and kept draws per chain, and chains (at least 2 for R-hat). Chains run
        sequentially on one device (``chain_method="sequential"``) so the process-global
        device count need not change.
    seed : int
        Random seed.
    static_kwargs : mapping, optional
        Keyword arguments that are not arrays (configuration, sizes).
    target_accept_prob, max_tree_depth
        NUTS settings.
    dims, coords : mapping, optional
        ArviZ dim names per site and their coordinates.
    progress : bool
        Show NumPyro's progress bar.
    init_values : mapping, optional
        Initial values of some latent sites (e.g. the SVI posterior means), through
        ``init_to_value``; the other sites start where NumPyro starts them (``init_to_uniform``).

    Returns
    -------
    NUTSResult
        ``.to_datatree()`` for ``az.summary`` (R-hat, ESS), ``az.loo``, …;
        ``.num_divergences``.

    Examples
    --------
    >>> import numpyro, numpyro.distributions as dist, jax.numpy as jnp
    >>> def model(y=None):
    ...     mu = numpyro.sample("mu", dist.Normal(0, 1))
    ...     numpyro.sample("y", dist.Normal(mu, 1), obs=y)
    >>> res = fit_nuts(model, {"y": jnp.ones(10)}, num_warmup=100, num_samples=100)
    >>> res.samples["mu"].shape
    (2, 100)
    """
    for name, value in (("num_warmup", num_warmup), ("num_samples", num_samples),
                        ("num_chains", num_chains)):
        check_int(name, value)
    data = dict(data or {})
    static_kwargs = dict(static_kwargs or {})
    clash = set(data) & set(static_kwargs)
    if clash:
        raise CausalZooError(
            f"{sorted(clash)} given both in data and static_kwargs; pass each argument once."
        )
    init = init_to_value(values=dict(init_values)) if init_values else init_to_uniform
    kernel = NUTS(model, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
                  init_strategy=init)
    mcmc = MCMC(
        kernel,
        num_warmup=int(num_warmup),
        num_samples=int(num_samples),
        num_chains=int(num_chains),
        chain_method="sequential",
        progress_bar=progress,
    )
    mcmc.run(as_key(seed), **data, **static_kwargs, extra_fields=("diverging",))
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    return NUTSResult(
        mcmc=mcmc,
        samples=samples,
        data=data,
        static_kwargs=static_kwargs,
        dims=dict(dims or {}),
        coords=dict(coords or {}),
    )
