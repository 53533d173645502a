"""The dynamical latent causal model in snapshot mode: each cell is measured once.

Sequencing destroys a cell, so a single-cell time course holds, at each time point, a fresh
sample of cells from a population whose latent causal variables evolve under the
mechanisms of :mod:`causalzoo.models.dynamical`. Time points are mapped to steps ``0..S-1``
of a grid (one transition per grid step). The path of a cell before its measurement is never
seen, so it is integrated out: the population of domain ``u`` at step ``s`` is the law of
``z_s`` under the lagged transition started from ``N(0, I)``, and each cell measured at
step ``s`` is one draw from it. Generative story, for cell ``n`` with perturbation / domain
``u_n`` and step ``s_n``::

    G, target, mean_shift, log_scale_shift   # globals, as in sequence mode
    population of domain u (a path of the process, marginally):
        z_t ~ Normal(0, I_k)                                          t < L
        z_t,i = f_i(G_i * z_{t-L..t-1}) + a_u target_{u,i} mean_shift_{u,i}
                + sigma_i exp(a_u target_{u,i} log_scale_shift_{u,i}) eps    t >= L
    for each cell n:                         # plate "cells"
        z_inv,n ~ Normal(0, I_{k_inv})
        z_n     ~ p_{u_n}(z_{s_n})           # the population's law at the cell's step
        x_n     ~ p(x | g(z_inv,n, z_n))

``a_u`` is 0 for the control domain (its mechanisms are the base ones) and 1 otherwise. The
perturbation acts on every transition, so it changes the population at each later step;
with ``modulate_history=False`` (default) the initial population does not depend on it.

**The population law** has no closed form for nonlinear mechanisms. It is represented by a
cloud of ``P`` particle paths per domain driven by *fixed* standard-normal draws (a
quadrature rule, the same in every call, so the model stays a deterministic density):
``p_u(z_s) = 1/P sum_p N(z_s; f(window of particle p before s) + shift_u, scale_u^2)``, a
Gaussian mixture that is exact for ``s < L + 1`` and converges to the law as ``P`` grows.
Gradients flow through the particles to the mechanisms, the lag graph and the shifts: the
population trajectory is what the time points constrain. Each cell's latent path up to its
time is thereby inferred as a population quantity (``predict`` samples it), not per cell.

**Linear mechanisms: the exact law.** With ``transition="linear"`` and the Gaussian prior
the process is a Gaussian vector autoregression, so the population law of every (domain,
step) is Gaussian, ``N(m_{u,s}, C_{u,s})``, computed exactly by propagating the mean and
covariance of the lagged window through the transition (:func:`population_gaussian`);
the cells' prior is that multivariate normal, with no particle error and no Monte Carlo
noise in its gradients. The particle paths are still drawn, for inspection
(``population``).

With ``prior="flow"`` each particle step is pushed through the learned transition of
:class:`~causalzoo.blocks.transitions.FlowLaggedTransition` (the fixed normal draws mapped
to the flow's base by their quantile), and a cell's prior is the mixture over the particles
of the flow step laws (:class:`FlowParticleMixture`): ``p_u(z_s) = 1/P sum_p p_flow(z_s |
window of particle p before s)``, each scored by the learned inverse and its Jacobian.

Guide: amortised over cells, ``q(z_n | x_n)`` and ``q(z_inv | x_n)`` (the encoder sees the
expression only, so new cells embed without labels); the global factors are those of
sequence mode.

**Identifiability.** Weaker than sequence mode: the pairing of states across time is lost.
The prior of ``z_n`` varies with (domain, step), as an iVAE prior varies with its auxiliary
variable, but it is a mixture, not a factorised exponential family, so no theorem of the
zoo's references covers it; measure it (``benchmarks/recovery_dynamical.py --snapshot``
reports Spearman MCC beside the entangled floor and beside sequence mode). Measured: with
linear mechanisms (the exact law) on ``leap_nonstationary(dynamics="linear")`` seen as
snapshots, the latents are recovered (``tests/identifiability/
test_dynamical_snapshot_linear_recovery.py``); with LEAP's leaky-ReLU mechanisms and the
particle mixture, not (``docs/models/dynamical_measurements.md``).

References
----------
- Jiang et al., *CITE-VAE*, arXiv:2605.25581 (snapshot data are part of its scope; the
  equations here are a reconstruction).
- Yao et al., LEAP (ICLR 2022) and TDRL (NeurIPS 2022) for the transition prior.
- Khemakhem et al., iVAE (AISTATS 2020) for priors conditioned on an auxiliary variable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .._errors import CausalZooError
from ..blocks.transitions import (
    flow_forward,
    flow_log_prob,
    normal_to_base,
    scan_lagged,
)
from .dynamical import (
    DEFAULT_CONFIG,
    DynamicalConfig,
    _gaussian_encoder,
    _scaled,
    domain_shifts,
    encoder_input,
    global_guide,
    model_blocks,
    observation,
    step_posterior,
)

__all__ = [
    "FlowParticleMixture",
    "flow_population_particles",
    "exact_population",
    "population_gaussian",
    "path_length",
    "population_marginal",
    "population_particles",
    "snapshot_guide",
    "snapshot_model",
]

N_PARTICLES = 256
_QUADRATURE_SEED = 0


def path_length(n_times: int, n_lags: int) -> int:
    """Steps of the population paths: the time grid, and at least ``n_lags + 1``."""
    return max(int(n_times), int(n_lags) + 1)


def quadrature_noise(n_particles: int, n_steps: int, n_latent: int):
    """The fixed standard-normal draws ``(P, n_steps, k)`` that drive the particle paths."""
    return jax.random.normal(jax.random.key(_QUADRATURE_SEED), (n_particles, n_steps, n_latent))


def population_particles(mean_fn, shift, scale, initial_scale, *, initial_shift: bool,
                         n_steps: int, n_lags: int, noise):
    """Propagate a fixed particle cloud through each domain's transitions.

    Parameters
    ----------
    mean_fn : callable
        The transition mean, ``(..., L, k) -> (..., k)``.
    shift, scale, initial_scale : arrays (D, k)
        Per-domain mean shift, transition noise scale and initial-state scale.
    noise : array (P, n_steps, k)
        Fixed standard-normal draws (the quadrature nodes).

    Returns
    -------
    loc, comp_scale : arrays (D, P, n_steps, k) and (D, n_steps, k)
        Step ``s`` of domain ``d`` has the mixture ``1/P sum_p N(loc[d, p, s], comp_scale[d,
        s])``: for ``s >= L``, ``loc`` is the transition mean from particle ``p``'s window.
    """
    shift, scale, initial_scale = shift[:, None, :], scale[:, None, :], initial_scale[:, None, :]
    initial, initial_loc = _initial_particles(shift, initial_scale, initial_shift, noise, n_lags)

    def step(window, eps):  # window (D, P, L, k), lag 1 first; eps (P, k)
        loc = mean_fn(window) + shift
        z = loc + scale * eps
        return z, loc

    later = _propagate(step, initial, noise[:, n_lags:])
    initial_locs = jnp.broadcast_to(initial_loc[:, :, None, :], initial.shape)
    loc = jnp.concatenate([initial_locs, later], axis=2)
    n_later = n_steps - n_lags
    comp_scale = jnp.concatenate(
        [jnp.broadcast_to(initial_scale, (shift.shape[0], n_lags, shift.shape[-1])),
         jnp.broadcast_to(scale, (shift.shape[0], n_later, shift.shape[-1]))], axis=1
    )
    return loc, comp_scale


def exact_population(config: DynamicalConfig) -> bool:
    """Whether the population law is computed exactly (:func:`population_gaussian`): linear
    mechanisms under the Gaussian prior (no ``history_scale``, which is a flow option)."""
    return config.transition == "linear" and config.prior == "gaussian"


def population_gaussian(mean_fn, shift, scale, initial_scale, *, initial_shift: bool,
                        n_steps: int, n_lags: int):
    """The exact population law of each (domain, step) when the transition mean is affine.

    The first ``L`` steps are independent ``N(initial_loc, initial_scale^2)``; step ``t``
    is ``A w_t + b + shift + scale * eps`` with ``w_t`` the stacked window ``[z_{t-1}, ...,
    z_{t-L}]``, so the window is jointly Gaussian at every step and its mean and covariance
    propagate exactly. ``A`` and ``b`` are read off ``mean_fn`` (its Jacobian and its value
    at zero), which must be affine in the window, as the linear mechanisms are.

    Parameters
    ----------
    mean_fn : callable
        The transition mean, ``(..., L, k) -> (..., k)``, affine.
    shift, scale, initial_scale : arrays (D, k)
        As in :func:`population_particles`.

    Returns
    -------
    loc, cov : arrays (D, n_steps, k) and (D, n_steps, k, k)
        The mean and covariance of ``z_s`` in domain ``d``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> ar = lambda window: 0.5 * window[..., 0, :]   # z_t = 0.5 z_{t-1} + eps
    >>> loc, cov = population_gaussian(ar, jnp.zeros((1, 1)), jnp.ones((1, 1)),
    ...                                jnp.ones((1, 1)), initial_shift=False, n_steps=3,
    ...                                n_lags=1)
    >>> [round(float(v), 4) for v in cov[0, :, 0, 0]]   # 1, 0.25 + 1, 0.25 * 1.25 + 1
    [1.0, 1.25, 1.3125]
    """
    n_dom, k = shift.shape
    lk = n_lags * k
    window0 = jnp.zeros((n_lags, k))
    a = jax.jacfwd(mean_fn)(window0).reshape(k, lk)  # rows: children; columns: (lag, parent)
    b = mean_fn(window0)
    initial_loc = shift if initial_shift else jnp.zeros_like(shift)
    mean = jnp.tile(initial_loc, (1, n_lags))  # (D, L k), lag 1 first
    cov = jax.vmap(jnp.diag)(jnp.tile(initial_scale**2, (1, n_lags)))  # (D, L k, L k)
    noise_cov = jax.vmap(jnp.diag)(scale**2)
    keep = lk - k  # the window's entries that move one lag back

    def step(carry, _):
        mean, cov = carry
        loc = mean @ a.T + b + shift
        cross = jnp.einsum("ij,djl->dil", a, cov)  # Cov(z_t, window) (D, k, L k)
        var = jnp.einsum("dil,jl->dij", cross, a) + noise_cov
        new_mean = jnp.concatenate([loc, mean[:, :keep]], axis=-1)
        top = jnp.concatenate([var, cross[:, :, :keep]], axis=-1)
        bottom = jnp.concatenate([jnp.swapaxes(cross[:, :, :keep], 1, 2),
                                  cov[:, :keep, :keep]], axis=-1)
        return (new_mean, jnp.concatenate([top, bottom], axis=1)), (loc, var)

    _, (later_loc, later_cov) = jax.lax.scan(step, (mean, cov), None,
                                             length=n_steps - n_lags)
    first_loc = jnp.broadcast_to(initial_loc[:, None], (n_dom, n_lags, k))
    first_cov = jnp.broadcast_to(jax.vmap(jnp.diag)(initial_scale**2)[:, None],
                                 (n_dom, n_lags, k, k))
    loc = jnp.concatenate([first_loc, jnp.moveaxis(later_loc, 0, 1)], axis=1)
    cov = jnp.concatenate([first_cov, jnp.moveaxis(later_cov, 0, 1)], axis=1)
    return loc, cov


def _initial_particles(shift, initial_scale, initial_shift, noise, n_lags):
    """The particles' first ``n_lags`` steps ``(D, P, L, k)`` and their mean ``(D, 1, k)``."""
    initial_loc = shift if initial_shift else jnp.zeros_like(shift)
    initial = initial_loc[:, :, None, :] + initial_scale[:, :, None, :] * noise[None, :, :n_lags]
    return initial, initial_loc


def _propagate(step, initial, noise_later):
    """:func:`~causalzoo.blocks.transitions.scan_lagged` over the steps after the history
    (``noise_later`` is ``(P, steps, k)``); returns the outputs stacked on axis 2."""
    later = scan_lagged(step, initial, jnp.moveaxis(noise_later, 1, 0))
    return jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, 2), later)


def flow_population_particles(flow_fn, shift, scale, initial_scale, *, base: str,
                              initial_shift: bool, n_steps: int, n_lags: int, noise):
    """The particle cloud of :func:`population_particles` under the flow prior.

    Each particle step ``s >= L`` is pushed through the learned transition,
    ``z = flow_forward(eps, ...)``, with ``eps`` the fixed normal draw mapped to the base by
    its quantile (:func:`causalzoo.blocks.transitions.normal_to_base`).

    Returns
    -------
    paths : array (D, P, n_steps, k)
        The particles themselves.
    components : tuple of four arrays (D, P, n_steps, k)
        ``(loc, scale, skew, log_tail)`` of each particle's step law: for ``s >= L`` the
        flow given the particle's window (:func:`causalzoo.blocks.transitions.flow_log_prob`);
        for ``s < L`` the initial Gaussian (``skew = log_tail = 0``).
    """
    shift, scale, initial_scale = shift[:, None, :], scale[:, None, :], initial_scale[:, None, :]
    initial, initial_loc = _initial_particles(shift, initial_scale, initial_shift, noise, n_lags)

    def step(window, eps):  # window (D, P, L, k); eps (P, k)
        p = flow_fn(window)
        params = (p.loc + shift, scale * jnp.exp(p.log_scale), p.skew, p.log_tail)
        z = flow_forward(normal_to_base(eps, base), *params)
        return z, (z, *params)

    later_z, *later = _propagate(step, initial, noise[:, n_lags:])
    paths = jnp.concatenate([initial, later_z], axis=2)
    zeros = jnp.zeros_like(initial)
    first = (jnp.broadcast_to(initial_loc[:, :, None, :], initial.shape),
             jnp.broadcast_to(initial_scale[:, :, None, :], initial.shape), zeros, zeros)
    components = tuple(jnp.concatenate([a, b], axis=2) for a, b in zip(first, later, strict=True))
    return paths, components


class FlowParticleMixture(dist.Distribution):
    """The cells' prior under the flow prior: an equal-weight mixture over the particles of
    the flow step laws, ``p(z) = 1/P sum_p p_flow(z | particle p's window)``.

    Parameters
    ----------
    loc, scale, skew, log_tail : arrays (cells, P, k)
        Each component's flow parameters (see :func:`flow_population_particles`).
    initial : bool array (cells,)
        Cells in the first ``n_lags`` steps, whose components are Gaussian (the flow's
        ``base`` applies to later steps only).
    base : {"normal", "laplace"}
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector
    pytree_data_fields = ("loc", "scale", "skew", "log_tail", "initial")
    pytree_aux_fields = ("base",)

    def __init__(self, loc, scale, skew, log_tail, initial, *, base: str = "normal",
                 validate_args=None):
        self.loc, self.scale, self.skew, self.log_tail = loc, scale, skew, log_tail
        self.initial = jnp.asarray(initial)
        self.base = base
        super().__init__(batch_shape=jnp.shape(loc)[:-2], event_shape=jnp.shape(loc)[-1:],
                         validate_args=validate_args)

    def log_prob(self, value):
        z = value[..., None, :]  # against every particle
        flow = flow_log_prob(z, self.loc, self.scale, self.skew, self.log_tail, self.base)
        gauss = flow_log_prob(z, self.loc, self.scale, self.skew, self.log_tail, "normal")
        comps = jnp.where(self.initial[..., None, None], gauss, flow).sum(-1)
        return jax.nn.logsumexp(comps, axis=-1) - jnp.log(comps.shape[-1])

    def sample(self, key, sample_shape=()):
        key_pick, key_eps = jax.random.split(key)
        n_particles = self.loc.shape[-2]
        shape = sample_shape + self.batch_shape
        pick = jax.random.randint(key_pick, shape, 0, n_particles)

        def take(a):
            a = jnp.broadcast_to(a, shape + a.shape[-2:])
            return jnp.take_along_axis(a, pick[..., None, None], axis=-2)[..., 0, :]

        eps = jax.random.normal(key_eps, shape + self.event_shape)
        eps = jnp.where(self.initial[..., None], eps, normal_to_base(eps, self.base))
        return flow_forward(eps, *(take(a) for a in (self.loc, self.scale, self.skew,
                                                     self.log_tail)))


def population_marginal(loc, comp_scale, u, time_index):
    """The cells' prior: the particle mixture of their domain at their step, ``(cells,)``
    batch, event ``(k,)``."""
    cell_loc = loc[u, :, time_index]  # (cells, P, k)
    cell_scale = comp_scale[u, time_index][:, None, :]
    n_particles = cell_loc.shape[-2]
    return dist.MixtureSameFamily(
        dist.Categorical(logits=jnp.zeros(cell_loc.shape[:-1])),
        dist.Normal(cell_loc, cell_scale).to_event(1),
    ) if n_particles > 1 else dist.Normal(cell_loc[:, 0], cell_scale[:, 0]).to_event(1)


def _checked(x, u, time_index, n_features, n_times, n_domains):
    if u is None or time_index is None:
        raise CausalZooError(
            "Snapshot mode needs `u` (the domain / perturbation code of each cell, shape "
            "(cells,)) and `time_index` (each cell's step on the time grid, shape (cells,))."
        )
    if jnp.ndim(u) != 1 or jnp.shape(time_index) != jnp.shape(u):
        raise CausalZooError(
            f"u and time_index must be 1-D with one entry per cell; got shapes "
            f"{jnp.shape(u)} and {jnp.shape(time_index)}."
        )
    if x is not None:
        if jnp.ndim(x) != 2:
            raise CausalZooError(f"x must be 2-D (cells, features); got shape {jnp.shape(x)}.")
        if x.shape[0] != u.shape[0]:
            raise CausalZooError(f"x has {x.shape[0]} cells but u has {u.shape[0]}.")
        n_features = x.shape[1]
    if n_features is None:
        raise CausalZooError("Pass `n_features` when `x` is None (e.g. for prior draws).")
    if n_times is None or n_domains is None:
        raise CausalZooError(
            "Pass `n_times` (the length of the time grid) and `n_domains` (u takes values "
            "0..n_domains-1)."
        )
    return u.shape[0], n_features


def domain_activity(n_domains: int, control_domain: int | None):
    """``(n_domains, 1)``: 0 for the control domain (base mechanisms), 1 for the others."""
    active = jnp.ones((n_domains, 1))
    return active if control_domain is None else active.at[control_domain].set(0.0)


def _refuse_weight_shift(config: DynamicalConfig) -> None:
    if config.weight_shift_scale is not None:
        raise CausalZooError(
            f"weight_shift_scale={config.weight_shift_scale} (domains that change the lag "
            "weights) is implemented in sequence mode only; in snapshot mode a perturbation "
            "changes the mean and noise scale of its targets. Leave it None."
        )


def snapshot_model(
    x=None,
    u=None,
    time_index=None,
    library_size=None,
    *,
    n_cells: int | None = None,
    n_features: int | None = None,
    n_times: int | None = None,
    n_domains: int | None = None,
    control_domain: int | None = None,
    n_particles: int = N_PARTICLES,
    config: DynamicalConfig = DEFAULT_CONFIG,
):
    """The snapshot-mode generative model (see the module docstring).

    Parameters
    ----------
    x : array (cells, features), optional
        One measurement per cell; ``None`` to sample.
    u : array of int (cells,)
        Domain / perturbation code of each cell.
    time_index : array of int (cells,)
        Each cell's step on the time grid, ``0..n_times-1`` (larger steps need a larger
        ``n_times``: extrapolation).
    library_size : array (cells,), optional
        Library sizes for count likelihoods; defaults to ``x.sum(-1)``.
    n_cells : int, optional
        Total number of cells when ``x`` is a minibatch (scales the cell log-densities).
    n_features : int, optional
        Number of features when ``x`` is None.
    n_times : int
        Length of the time grid.
    n_domains : int
        Number of domains.
    control_domain : int, optional
        Code of the control domain, whose mechanisms are the base ones (no shifts).
    n_particles : int
        Particle paths per domain that represent the population law.
    config : DynamicalConfig

    Returns
    -------
    dict
        ``{"z_inv", "z", "population", "lag_graph", "target", "x"}``; ``population`` is the
        particle paths ``(n_domains, n_particles, steps, k)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro import handlers
    >>> out = handlers.seed(snapshot_model, 0)(
    ...     u=jnp.array([0, 1, 1]), time_index=jnp.array([0, 1, 3]), n_features=5,
    ...     n_times=4, n_domains=2, n_particles=16)
    >>> out["z"].shape, out["population"].shape, out["x"].shape
    ((3, 4), (2, 16, 4, 4), (3, 5))
    """
    _refuse_weight_shift(config)
    n_batch, n_features = _checked(x, u, time_index, n_features, n_times, n_domains)
    k, k_inv, lags = config.n_latent, config.n_latent_invariant, config.n_lags
    n_path = path_length(n_times, lags)
    time_index = jnp.asarray(time_index)
    (lag_graph, target, mean_shift, log_scale_shift), log_sigma, fn, decoder, library_size = (
        model_blocks(config, n_domains, n_features, x, library_size, library_shape="(cells,)")
    )

    active = domain_activity(n_domains, control_domain)
    domain_mean, domain_log_scale = domain_shifts(config, target, mean_shift, log_scale_shift)
    domain_mean, domain_log_scale = active * domain_mean, active * domain_log_scale
    domain_args = (
        domain_mean, jnp.exp(log_sigma + domain_log_scale),
        jnp.exp(domain_log_scale) if config.modulate_history else jnp.ones_like(mean_shift),
    )
    noise = quadrature_noise(n_particles, n_path, k)
    if config.prior == "flow":
        paths, components = flow_population_particles(
            fn, *domain_args, base=config.flow_base, initial_shift=config.modulate_history,
            n_steps=n_path, n_lags=lags, noise=noise,
        )
        population = numpyro.deterministic("population", paths)
        cell_components = [a[u, :, time_index] for a in components]  # (cells, P, k)
        prior_z = FlowParticleMixture(*cell_components, time_index < lags,
                                      base=config.flow_base)
    else:
        loc, comp_scale = population_particles(
            fn, *domain_args, initial_shift=config.modulate_history, n_steps=n_path,
            n_lags=lags, noise=noise,
        )
        # the particles themselves (transition mean + their own fixed noise), for inspection
        population = numpyro.deterministic("population", loc + comp_scale[:, None] * noise)
        if exact_population(config):
            pop_loc, pop_cov = population_gaussian(
                fn, *domain_args, initial_shift=config.modulate_history, n_steps=n_path,
                n_lags=lags,
            )
            prior_z = dist.MultivariateNormal(
                pop_loc[u, time_index], scale_tril=jnp.linalg.cholesky(pop_cov)[u, time_index])
        else:
            prior_z = population_marginal(loc, comp_scale, u, time_index)
    z_inv = None
    with _scaled(n_batch, n_cells), numpyro.plate("cells", n_batch, dim=-1):
        if k_inv:
            z_inv = numpyro.sample("z_inv", dist.Normal(0.0, 1.0).expand([k_inv]).to_event(1))
        z = numpyro.sample("z", prior_z)
        h = z if z_inv is None else jnp.concatenate([z_inv, z], axis=-1)
        x = numpyro.sample("x", observation(config, decoder(h), library_size).to_event(1),
                           obs=x)
    return {"z_inv": z_inv, "z": z, "population": population, "lag_graph": lag_graph,
            "target": target, "x": x}


def snapshot_guide(
    x=None,
    u=None,
    time_index=None,
    library_size=None,
    *,
    n_cells: int | None = None,
    n_features: int | None = None,
    n_times: int | None = None,
    n_domains: int | None = None,
    control_domain: int | None = None,
    n_particles: int = N_PARTICLES,
    config: DynamicalConfig = DEFAULT_CONFIG,
):
    """Amortised guide: ``q(z | x)``, ``q(z_inv | x)`` and the global factors."""
    if x is None:
        raise CausalZooError("The guide needs the observed `x` (it is amortised over cells).")
    if config.encoder_context:
        raise CausalZooError(
            f"encoder_context={config.encoder_context} reads neighbouring steps of a "
            "sequence, but snapshot mode sees each cell once: leave it 0."
        )
    if config.encoder != "step":
        raise CausalZooError(
            f"encoder={config.encoder!r} reads a whole sequence, but snapshot mode sees "
            "each cell once: leave encoder='step'."
        )
    _refuse_weight_shift(config)
    n_batch, n_features = _checked(x, u, time_index, n_features, n_times, n_domains)
    global_guide(n_domains, config=config)
    h = encoder_input(x, config.likelihood_block)
    posterior = step_posterior("encoder", n_features, config)
    with _scaled(n_batch, n_cells), numpyro.plate("cells", n_batch, dim=-1):
        if config.n_latent_invariant:
            encode_inv = _gaussian_encoder(
                "encoder_invariant", n_features, config.n_latent_invariant, config
            )
            loc_inv, scale_inv = encode_inv(h)
            numpyro.sample("z_inv", dist.Normal(loc_inv, scale_inv).to_event(1))
        numpyro.sample("z", posterior(h))
