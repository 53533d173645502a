"""The dynamical latent causal model (CITE-VAE style), sequence mode.

Generative story, for unit ``n`` (a sequence of ``T`` steps) in domain ``u_n``, with ``k``
time-lagged latent causal variables, ``L`` lags and ``k_inv`` invariant latents::

    G_l[i, j] ~ Bernoulli(p_edge)            # lag graph: z_{t-l, j} -> z_{t, i}, l = 1..L
    for each domain d, latent i:             # plates "domains", "latents"
        target_di         ~ Bernoulli(p_target)      # does domain d act on variable i?
        mean_shift_di     ~ Normal(0, shift_scale^2)
        log_scale_shift_di ~ Normal(0, log_scale_shift_scale^2)
    for each unit n:                         # plate "units"
        z_inv,n ~ Normal(0, I_{k_inv})       # never depends on u_n or t
        z_n,t   ~ Normal(0, I_k)                                          t < L
        z_n,t,i = f_i(G_i * z_n,{t-L..t-1}) + target_{u,i} mean_shift_{u,i}
                  + sigma_i exp(target_{u,i} log_scale_shift_{u,i}) eps   t >= L
                  # noise_modulation="all": exp(log_scale_shift_{u,i}), ungated (LEAP)
        for each step t:                     # plates "units" x "steps"
            x_n,t ~ p(x | g(z_inv,n, z_n,t))  # Gaussian (default), NB, ZINB or Poisson

``f_i`` is a linear map of the masked lagged parents (a sparse VAR) plus, with
``transition="mlp"``, a nonlinear residual: one MLP shared by the variables and told which
variable it computes by a one-hot input, so each ``f_i`` is its own function of its masked
parents. ``sigma`` are point-estimated base noise scales.
With ``modulate_history=True`` a domain's shifts act on the initial steps as well (base
distribution N(0, 1)), for data whose history already depends on the domain.
With ``prior="flow"`` (LEAP / TDRL style) step ``t >= L`` is instead scored through a
learned inverse transition, component-wise given the history::

    v_n,t,i   = (z_n,t,i - f_i(.) - target_{u,i} mean_shift_{u,i})
                / (sigma_i exp(target_{u,i} log_scale_shift_{u,i} + s_i(.)))
    eps_n,t,i = sinh(exp(tau_i(.)) asinh(v_n,t,i) - skew_i(.))  ~ p_base   # N(0,1) or Laplace
    log p(z_n,t | history) = sum_i log p_base(eps_n,t,i) + log |d eps_n,t,i / d z_n,t,i|

(``(.)`` the masked window; with ``transition="linear"``, ``s = 0``, or a learned function
of the window with ``history_scale=True``, and ``skew, tau`` are learned per-variable
constants), so the domain still shifts the mean and noise scale of its
targets, and the noise shape is learned (:mod:`causalzoo.blocks.transitions`).
The transition log-density of a whole path is computed at once from the path (every ``z_t``
is a latent site, so all windows are known): no loop over time in the ELBO. Prior sampling
runs the recursion with ``jax.lax.scan``.

Guide: a per-step MLP encoder ``q(z_t | x_t)`` (mean-field over steps and variables),
``q(z_inv | x_{0:T})`` from the time-average of the encoder input, straight-through
Bernoulli factors for the lag graph and the domain targets (:mod:`causalzoo.blocks.priors`),
Gaussian factors for the domain shifts.

**Identifiability class** (LEAP / TDRL, and CITE-VAE's stated "standard equivalence
class"): the time-lagged latents up to a permutation and component-wise invertible maps,
given an injective decoder, conditionally independent transition noise given the history
and domain, and enough variability of the noise distribution across domains and histories.
Verify with Spearman MCC against an entangled floor
(:func:`causalzoo.identifiability.mcc`, :func:`causalzoo.identifiability.entangled_floor`).
The invariant block ``z_inv`` is claimed only up to a block-invertible map.

Snapshot mode (each cell measured once, at its own time point) is
:mod:`causalzoo.models.dynamical_snapshot`: the same mechanisms, with cells drawn from the
population law at their time step.
Labels per step: with ``u`` of shape ``(units, steps)`` step ``t``'s code changes the
mechanisms that produce ``z_t`` (a perturbation switched on or off along a sequence, as in
CITRIS's per-step interventions).
With ``weight_shift_scale`` set a domain also changes the linear lag weights of its targets
(TDRL's changing causal dynamics)::

    weight_shift_dilj ~ Normal(0, weight_shift_scale^2)   # or Laplace / Cauchy(0, scale)
    f_i^u(.) = f_i(.) + sum_{l, j} target_{u,i} G_l[i, j] weight_shift_{u,i,l,j} z_{t-l,j}

References
----------
- Jiang et al., *CITE-VAE*, SIGKDD 2026 AI4Science, arXiv:2605.25581 (abstract only; the
  equations here are a reconstruction from its relatives).
- Yao et al., *Learning Temporally Causal Latent Processes from General Temporal Data*,
  ICLR 2022 (LEAP).
- Yao et al., *Temporally Disentangled Representation Learning*, NeurIPS 2022 (TDRL).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

from .._errors import CausalZooError, check_bool, check_int
from ..blocks.likelihoods import Likelihood, get_likelihood
from ..blocks.nn import attach, default_factory, recurrent_factory, scale_tril
from ..blocks.priors import StraightThroughBernoulli
from ..blocks.transitions import (
    FLOW_BASES,
    PRIORS,
    FlowLaggedTransition,
    LaggedTransition,
    flow_transition,
    lagged_transition,
    transition_mean,
)

__all__ = [
    "DynamicalConfig",
    "FlowLaggedTransition",
    "LaggedTransition",
    "domain_shifts",
    "dynamical_guide",
    "dynamical_model",
    "forecast",
    "global_guide",
    "weight_shifts",
]

NETWORK_NAMES = ("decoder", "encoder", "encoder_invariant", "transition")
TRANSITIONS = ("mlp", "linear")
NOISE_MODULATIONS = ("targets", "all")
POSTERIORS = ("diagonal", "full")
ENCODERS = ("step", "recurrent")
_WEIGHT_SHIFT_DISTRIBUTIONS = {"normal": dist.Normal, "laplace": dist.Laplace,
                                "cauchy": dist.Cauchy}
WEIGHT_SHIFT_PRIORS = tuple(_WEIGHT_SHIFT_DISTRIBUTIONS)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


@dataclass(frozen=True)
class DynamicalConfig:
    """Hyper-parameters of the dynamical model (JSON-serialisable by name).

    Parameters
    ----------
    n_latent : int
        Number ``k`` of time-lagged latent causal variables ``z_t``.
    n_latent_invariant : int
        Size of the invariant block ``z_inv`` (0 leaves it out).
    n_lags : int
        Number ``L`` of lags of the transition (the first ``L`` steps are drawn from N(0, I)).
    n_hidden, n_layers : int
        Width and depth of the encoder, decoder and transition MLPs.
    likelihood : str or Likelihood
        ``"gaussian"`` (default, continuous sequences), ``"nb"``, ``"zinb"``, ``"poisson"``.
    transition : {"mlp", "linear"}
        Nonlinear per-variable mechanisms, or a sparse linear VAR.
    prior : {"gaussian", "flow"}
        Transition prior: the conditional Gaussian (default), or the flow prior (a learned
        component-wise inverse transition to the noise plus its exact Jacobian, LEAP / TDRL
        style; :class:`~causalzoo.blocks.transitions.FlowLaggedTransition`) for noise that is
        not Gaussian or whose scale and shape depend on the history.
    flow_base : {"normal", "laplace"}
        Base distribution of the flow prior's noise (unit variance); ignored by the
        Gaussian prior.
    history_scale : bool
        With ``transition="linear"`` and ``prior="flow"``: let each variable's noise scale
        be a learned function of its masked history (the network ``"transition"``, one
        log-scale output, starting at 0), the mean staying a sparse linear VAR (a process
        such as CaRiNG's, whose noise scale is proportional to the previous value; the
        scale of variable ``i`` sees only its parents in the lag graph, so a dependence on
        its own past needs the self-edge ``z_{t-1, i} -> z_{t, i}`` kept). Default False: a
        constant scale. ``transition="mlp"`` under the flow prior learns a
        history-dependent scale already.
    edge_probability : float
        Prior probability of each lagged edge ``z_{t-l, j} -> z_{t, i}``.
    target_probability : float
        Prior probability that a domain changes the mechanism of a variable.
    shift_scale, log_scale_shift_scale : float
        Prior scales of the domain mean shifts and log noise-scale shifts.
    noise_modulation : {"targets", "all"}
        Which latents' noise scales a domain changes: ``"targets"`` (default) only its
        targets' (``target * log_scale_shift``, like the mean shift); ``"all"`` every
        latent's (``log_scale_shift`` ungated, LEAP's non-stationary noise model, in which
        the noise of every variable may change across domains), the targets then gating the
        mean shifts only.
    weight_shift_scale : float, optional
        Let a domain change the **dynamics** of its targets, not only their mean and noise
        scale: per domain, target and lagged parent a weight change
        ``weight_shift[d, i, l, j] ~ Normal(0, weight_shift_scale^2)``, gated by the
        target indicator and the lag graph, added to the linear lag weights (TDRL's
        changing causal dynamics). ``None`` (default) leaves the lag weights shared by all
        domains. Sequence mode only.
    weight_shift_prior : {"normal", "laplace", "cauchy"}
        Prior of each lag-weight change, entry by entry, with scale ``s =
        weight_shift_scale``: ``"normal"`` (default), ``Normal(0, s^2)``, which does not
        change when a domain's change is rotated among the latents; ``"laplace"``,
        ``Laplace(0, s)`` (standard deviation ``s * sqrt(2)``), whose ``|w| / s`` penalty
        prefers a change confined to a few entries to the same change spread over many;
        or ``"cauchy"``, ``Cauchy(0, s)``, whose ``log(1 + w^2 / s^2)`` penalty grows
        only logarithmically, so it nearly counts the entries much larger than ``s``
        (sparser still). The sparse priors aim at identification by the sparsity of the
        change when the dynamics are linear-Gaussian; measured on TDRL's linear draw they
        do not make recovery robust (``docs/models/dynamical_measurements.md``, "A sparse
        prior on the weight changes"). The guide's factor stays Gaussian; the ELBO's term for the
        change is then a Monte Carlo estimate. Needs ``weight_shift_scale``.
    modulate_history : bool
        Let the domain's mean and log-scale shifts act on the first ``n_lags`` steps too
        (default: those steps are N(0, I), as in LEAP and TDRL).
    posterior : {"diagonal", "full"}
        Covariance of the per-step guide ``q(z_t | x_t)``: diagonal (mean-field over the
        variables, default) or a full Cholesky factor per step. A mean-field guide's ELBO
        penalises a decoder whose Jacobian columns are not orthogonal, so it can prefer an
        entangled (rotated) solution to the true one; ``"full"`` removes that bias within
        a step (the reason the iVAE defaults to it; ``docs/models/dynamical_measurements.md``).
    observation_scale : float, optional
        Fixed standard deviation of the Gaussian observation noise (the iVAE's and LEAP's
        practice on noise-free sequences); ``None`` (default) learns a per-feature scale.
        Only for ``likelihood="gaussian"``.
    encoder_context : int
        Sequence mode: the encoder of step ``t`` reads the observations of steps ``t - c ..
        t + c`` (``c = encoder_context``; the sequence's first and last steps repeated at
        its ends) instead of ``x_t`` alone. Needed when ``x_t`` does not determine ``z_t``
        (a non-invertible observation map, as in CaRiNG, where later and earlier steps
        reveal the unobserved latents). Snapshot mode sees each cell once and refuses it.
    encoder : {"step", "recurrent"}
        Sequence mode: the amortised network of ``q(z_t | x)``. ``"step"`` (default): an MLP
        per step, reading ``x_t`` (or the window of ``encoder_context``); ``"recurrent"``:
        a bidirectional GRU over the whole sequence and a per-step head
        (:class:`causalzoo.blocks.nn.RecurrentEncoder`), so ``q(z_t | x_{1:T})`` reads
        every step before and after ``t``, as LEAP's and TDRL's sequence encoders do. A
        custom ``networks["encoder"]`` module gets the ``(units, steps, features)`` array
        either way. ``encoder_context`` is for the step encoder only; snapshot mode sees
        each cell once and refuses ``"recurrent"``.
    activation : str
        Hidden activation of the MLPs.
    networks : mapping, optional
        Custom network factories by name (``decoder``, ``encoder``, ``encoder_invariant``,
        ``transition``): ``factory(in_features, out_features, *, rngs) -> nnx.Module``.
        The transition network gets ``out_features=1`` under the Gaussian prior and 4 under
        the flow prior (mean, log-scale, skew and log tail residuals); with
        ``history_scale=True`` it gets 1 (the log-scale).
    """

    n_latent: int = 4
    n_latent_invariant: int = 0
    n_lags: int = 1
    n_hidden: int = 64
    n_layers: int = 2
    likelihood: str | Likelihood = "gaussian"
    transition: str = "mlp"
    prior: str = "gaussian"
    flow_base: str = "normal"
    history_scale: bool = False
    edge_probability: float = 0.5
    target_probability: float = 0.5
    shift_scale: float = 1.0
    log_scale_shift_scale: float = 1.0
    noise_modulation: str = "targets"
    weight_shift_scale: float | None = None
    weight_shift_prior: str = "normal"
    modulate_history: bool = False
    posterior: str = "diagonal"
    observation_scale: float | None = None
    encoder_context: int = 0
    encoder: str = "step"
    activation: str = "leaky_relu"
    networks: Mapping[str, Callable] | None = field(default=None, compare=False)

    def __post_init__(self):
        for name, minimum in (("n_latent", 1), ("n_lags", 1), ("n_hidden", 1),
                              ("n_latent_invariant", 0), ("n_layers", 0),
                              ("encoder_context", 0)):
            # numpy integers are accepted and stored as int (the config is saved as JSON)
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum))
        for name in ("edge_probability", "target_probability"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 < value < 1.0:
                raise CausalZooError(f"{name} must lie in (0, 1); got {value!r}.")
        for name in ("shift_scale", "log_scale_shift_scale"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise CausalZooError(f"{name} must be > 0; got {value!r}.")
        ws = self.weight_shift_scale
        if ws is not None and (not _is_number(ws) or not ws > 0):
            raise CausalZooError(
                f"weight_shift_scale must be a number > 0, or None to keep the lag weights "
                f"shared by all domains; got {ws!r}."
            )
        if self.weight_shift_prior not in WEIGHT_SHIFT_PRIORS:
            raise CausalZooError(
                f"weight_shift_prior={self.weight_shift_prior!r}: use one of "
                f"{list(WEIGHT_SHIFT_PRIORS)} (the prior of each lag-weight change: "
                "'normal', or 'laplace' / 'cauchy' for changes confined to few entries)."
            )
        if self.weight_shift_prior != "normal" and ws is None:
            raise CausalZooError(
                f"weight_shift_prior={self.weight_shift_prior!r} is the prior of the domains' "
                "lag-weight changes, which are off (weight_shift_scale=None): set "
                "weight_shift_scale too, or leave weight_shift_prior='normal'."
            )
        if self.transition not in TRANSITIONS:
            raise CausalZooError(
                f"transition={self.transition!r}: use one of {list(TRANSITIONS)} (for the "
                "flow-style transition prior, pass prior='flow')."
            )
        if self.prior not in PRIORS:
            raise CausalZooError(
                f"prior={self.prior!r}: use one of {list(PRIORS)} ('gaussian': conditional "
                "Gaussian transitions; 'flow': learned inverse transition with its Jacobian)."
            )
        if self.noise_modulation not in NOISE_MODULATIONS:
            raise CausalZooError(
                f"noise_modulation={self.noise_modulation!r}: use one of "
                f"{list(NOISE_MODULATIONS)} ('targets': a domain changes the noise scale of "
                "its targets only; 'all': of every latent)."
            )
        if self.posterior not in POSTERIORS:
            raise CausalZooError(
                f"posterior={self.posterior!r}: use one of {list(POSTERIORS)} (the covariance "
                "of the per-step guide q(z_t | x_t))."
            )
        scale = self.observation_scale
        if scale is not None:
            if not _is_number(scale) or not scale > 0:
                raise CausalZooError(
                    f"observation_scale must be a number > 0, or None to learn it; got "
                    f"{scale!r}."
                )
            if get_likelihood(self.likelihood).name != "gaussian":
                raise CausalZooError(
                    "observation_scale fixes the Gaussian likelihood's noise; it does not "
                    f"apply to likelihood={get_likelihood(self.likelihood).name!r} (leave "
                    "it None)."
                )
        if self.flow_base not in FLOW_BASES:
            raise CausalZooError(
                f"flow_base={self.flow_base!r}: use one of {list(FLOW_BASES)} (the base "
                "distribution of the flow prior's noise)."
            )
        object.__setattr__(self, "history_scale", check_bool("history_scale", self.history_scale))
        if self.history_scale and (self.prior != "flow" or self.transition != "linear"):
            raise CausalZooError(
                "history_scale=True needs transition='linear' and prior='flow' (a linear "
                "mean whose flow noise scale follows the history); got "
                f"transition={self.transition!r}, prior={self.prior!r}. The Gaussian prior's "
                "scale does not depend on the history, and transition='mlp' under the flow "
                "prior learns a history-dependent scale already."
            )
        if self.encoder not in ENCODERS:
            raise CausalZooError(
                f"encoder={self.encoder!r}: use one of {list(ENCODERS)} ('step': an MLP per "
                "step; 'recurrent': a bidirectional GRU over the sequence)."
            )
        if self.encoder == "recurrent" and self.encoder_context:
            raise CausalZooError(
                f"encoder_context={self.encoder_context} widens the step encoder's window; "
                "encoder='recurrent' reads the whole sequence already: leave "
                "encoder_context 0."
            )
        unknown = set(self.networks or {}) - set(NETWORK_NAMES)
        if unknown:
            raise CausalZooError(
                f"Unknown network name(s) {sorted(unknown)}; replaceable networks are "
                f"{list(NETWORK_NAMES)}."
            )
        self.likelihood_block  # noqa: B018  (validates the name early)

    @property
    def likelihood_block(self) -> Likelihood:
        return get_likelihood(self.likelihood)

    def network(self, name: str) -> Callable:
        """The factory ``(in_features, out_features, *, rngs) -> nnx.Module`` of a network."""
        custom = (self.networks or {}).get(name)
        if custom:
            return custom
        if name == "encoder" and self.encoder == "recurrent":
            return recurrent_factory(self.n_hidden, self.n_layers, self.activation)
        return default_factory(self.n_hidden, self.n_layers, self.activation)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; custom likelihood instances or networks cannot be saved."""
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
            if isinstance(value, Likelihood):
                value = value.name
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides) -> DynamicalConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise CausalZooError(
                f"Saved configuration has unknown fields {sorted(unknown)}: it was written by "
                "an incompatible causalzoo version."
            )
        return cls(**{**d, **overrides})


DEFAULT_CONFIG = DynamicalConfig()


class _scaled:
    """``handlers.scale`` by ``total / batch`` when the batch is a minibatch, else nothing."""

    def __init__(self, batch: int, total: int | None):
        scale = 1.0 if total is None else total / batch
        self.handler = handlers.scale(scale=scale) if scale != 1.0 else None

    def __enter__(self):
        if self.handler is not None:
            self.handler.__enter__()

    def __exit__(self, *exc):
        if self.handler is not None:
            self.handler.__exit__(*exc)


def _shapes(x, u, n_steps, n_features, n_domains):
    if u is None:
        raise CausalZooError(
            "The dynamical model needs `u`, the integer domain/perturbation code of each unit "
            "(shape (units,)) or of each step (shape (units, steps)); use zeros for a single "
            "domain."
        )
    if jnp.ndim(u) not in (1, 2):
        raise CausalZooError(
            f"u must be 1-D (one code per unit) or 2-D (one code per unit and step); got "
            f"shape {jnp.shape(u)}."
        )
    if x is not None:
        if jnp.ndim(x) != 3:
            raise CausalZooError(
                f"x must be 3-D (units, steps, features); got shape {jnp.shape(x)}."
            )
        if x.shape[0] != u.shape[0]:
            raise CausalZooError(f"x has {x.shape[0]} units but u has {u.shape[0]}.")
        n_steps, n_features = x.shape[1], x.shape[2]
    if jnp.ndim(u) == 2 and n_steps is not None and u.shape[1] != n_steps:
        raise CausalZooError(
            f"u has {u.shape[1]} steps per unit but the sequences have {n_steps}: per-step "
            "labels need one code per unit and step."
        )
    if n_steps is None or n_features is None:
        raise CausalZooError(
            "Pass `n_steps` and `n_features` when `x` is None (e.g. for prior predictive draws)."
        )
    if n_domains is None:
        raise CausalZooError(
            "Pass `n_domains`, the number of domain codes (u takes values 0..n_domains-1)."
        )
    return u.shape[0], n_steps, n_features


def transition_mean_fn(config: DynamicalConfig, lag_graph):
    """The conditional-Gaussian transition mean ``window (..., L, k) -> (..., k)`` of a
    configuration (declares the network/params); see
    :func:`causalzoo.blocks.transitions.transition_mean`."""
    return transition_mean(lag_graph, **_mechanism_kwargs(config))


def transition_fn(config: DynamicalConfig, lag_graph):
    """The function of the window the configured prior takes: the Gaussian mean
    (``prior="gaussian"``) or the flow's conditional inverse (``prior="flow"``,
    :func:`causalzoo.blocks.transitions.flow_transition`)."""
    if config.prior == "flow":
        return flow_transition(lag_graph, **_mechanism_kwargs(config))
    return transition_mean_fn(config, lag_graph)


def _mechanism_kwargs(config: DynamicalConfig) -> dict[str, Any]:
    return {"kind": config.transition, "factory": (config.networks or {}).get("transition"),
            "n_hidden": config.n_hidden, "n_layers": config.n_layers,
            "activation": config.activation, "history_scale": config.history_scale}


def model_blocks(config: DynamicalConfig, n_domains: int, n_features: int, x, library_size,
                 *, library_shape: str):
    """What both data modes declare first, in this order: the global sites, the base noise
    scales, the transition and the decoder; and the library sizes (``x.sum(-1)`` by
    default for count likelihoods).

    Returns
    -------
    globals_, log_sigma, fn, decoder, library_size
        ``globals_`` is ``(lag_graph, target, mean_shift, log_scale_shift)``; ``fn`` the
        function of the window of :func:`transition_fn`.
    """
    lik = config.likelihood_block
    k, k_inv = config.n_latent, config.n_latent_invariant
    globals_ = global_sites(n_domains, config)
    log_sigma = numpyro.param("log_transition_scale", jnp.zeros(k))
    fn = transition_fn(config, globals_[0])
    decoder = attach(
        "decoder",
        lambda rngs: config.network("decoder")(k_inv + k, lik.n_outputs * n_features, rngs=rngs),
    )
    if library_size is None and x is not None and lik.uses_library:
        library_size = x.sum(-1)
    if library_size is None and lik.uses_library:
        raise CausalZooError(
            f"Pass `library_size` {library_shape} when `x` is None for counts."
        )
    return globals_, log_sigma, fn, decoder, library_size


def global_sites(n_domains: int, config: DynamicalConfig):
    """The model's global latents: lag graph ``(k, L, k)`` and, per domain and latent, the
    target indicator, mean shift and log noise-scale shift ``(n_domains, k)``."""
    k, lags = config.n_latent, config.n_lags
    with numpyro.plate("latents", k, dim=-1):
        lag_graph = numpyro.sample(
            "lag_graph",
            dist.Bernoulli(probs=jnp.full((lags, k), config.edge_probability)).to_event(2),
        )
        with numpyro.plate("domains", n_domains, dim=-2):
            target = numpyro.sample("target", dist.Bernoulli(probs=config.target_probability))
            mean_shift = numpyro.sample("mean_shift", dist.Normal(0.0, config.shift_scale))
            log_scale_shift = numpyro.sample(
                "log_scale_shift", dist.Normal(0.0, config.log_scale_shift_scale)
            )
    return lag_graph, target, mean_shift, log_scale_shift


def domain_shifts(config: DynamicalConfig, target, mean_shift, log_scale_shift):
    """The shifts that act, per domain and latent: ``(mean, log noise scale)``.

    The mean shift is gated by the target indicator; the log noise-scale shift too under
    ``noise_modulation="targets"``, and not under ``"all"``.

    Examples
    --------
    >>> cfg = DynamicalConfig(noise_modulation="all")
    >>> mean, log_scale = domain_shifts(cfg, jnp.zeros((1, 2)), jnp.ones((1, 2)),
    ...                                 jnp.ones((1, 2)))
    >>> mean.tolist(), log_scale.tolist()
    ([[0.0, 0.0]], [[1.0, 1.0]])
    """
    gated_log_scale = (log_scale_shift if config.noise_modulation == "all"
                       else target * log_scale_shift)
    return target * mean_shift, gated_log_scale


def weight_shifts(n_domains: int, config: DynamicalConfig, lag_graph, target):
    """The domains' changes of the lag weights, ``(n_domains, k, L, k)`` indexed ``[domain,
    child, lag, parent]`` (declares the site ``"weight_shift"``; call inside a model), or
    ``None`` when ``config.weight_shift_scale`` is None. A change acts only on the domain's
    targets and along edges of the lag graph. Each entry's prior is
    ``Normal(0, weight_shift_scale^2)``, or ``Laplace(0, weight_shift_scale)`` /
    ``Cauchy(0, weight_shift_scale)`` with ``config.weight_shift_prior`` ``"laplace"`` /
    ``"cauchy"``.

    Examples
    --------
    >>> from numpyro import handlers
    >>> cfg = DynamicalConfig(n_latent=2, n_lags=1, weight_shift_scale=0.5)
    >>> with handlers.seed(rng_seed=0):
    ...     w = weight_shifts(3, cfg, jnp.ones((2, 1, 2)), jnp.ones((3, 2)))
    >>> w.shape
    (3, 2, 1, 2)
    """
    if config.weight_shift_scale is None:
        return None
    k, lags = config.n_latent, config.n_lags
    with numpyro.plate("latents", k, dim=-1), numpyro.plate("domains", n_domains, dim=-2):
        prior = _WEIGHT_SHIFT_DISTRIBUTIONS[config.weight_shift_prior]
        change = numpyro.sample(
            "weight_shift",
            prior(0.0, config.weight_shift_scale).expand([lags, k]).to_event(2),
        )
    return target[..., None, None] * change * lag_graph


def dynamical_model(
    x=None,
    u=None,
    library_size=None,
    *,
    n_units: int | None = None,
    n_cells: int | None = None,
    n_steps: int | None = None,
    n_features: int | None = None,
    n_domains: int | None = None,
    config: DynamicalConfig = DEFAULT_CONFIG,
):
    """The generative model (see the module docstring).

    Parameters
    ----------
    x : array (units, steps, features), optional
        Observed sequences (counts for count likelihoods); ``None`` to sample.
    u : array of int (units,) or (units, steps)
        Domain / perturbation code of each unit, in ``0..n_domains-1``, or of each step
        (step ``t``'s code changes the mechanisms that produce ``z_t``).
    library_size : array (units, steps), optional
        Library sizes for count likelihoods; defaults to ``x.sum(-1)``.
    n_units : int, optional
        Total number of units when ``x`` is a minibatch (scales the unit log-densities).
    n_cells : int, optional
        Alias of ``n_units`` (the name :func:`causalzoo.inference.fit_svi` passes).
    n_steps, n_features : int, optional
        Sizes when ``x`` is None.
    n_domains : int
        Number of domains.
    config : DynamicalConfig

    Returns
    -------
    dict
        ``{"z_inv", "z", "lag_graph", "target", "x"}`` of this trace (``z_inv`` is None when
        ``n_latent_invariant=0``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro import handlers
    >>> out = handlers.seed(dynamical_model, 0)(u=jnp.array([0, 1, 1]), n_steps=4,
    ...                                         n_features=5, n_domains=2)
    >>> out["z"].shape, out["x"].shape
    ((3, 4, 4), (3, 4, 5))
    """
    n_batch, n_steps, n_features = _shapes(x, u, n_steps, n_features, n_domains)
    k_inv, lags = config.n_latent_invariant, config.n_lags
    (lag_graph, target, mean_shift, log_scale_shift), log_sigma, fn, decoder, library_size = (
        model_blocks(config, n_domains, n_features, x, library_size,
                     library_shape="(units, steps)")
    )

    shift, domain_log_scale = domain_shifts(config, target, mean_shift, log_scale_shift)
    weights = weight_shifts(n_domains, config, lag_graph, target)
    # u (units,) or (units, steps): indexing gives per-unit or per-step arguments
    shift, domain_log_scale = shift[u], domain_log_scale[u]
    weights = None if weights is None else weights[u]
    z_inv = None
    with _scaled(n_batch, n_units or n_cells):
        with numpyro.plate("units", n_batch, dim=-1):
            if k_inv:
                z_inv = numpyro.sample(
                    "z_inv", dist.Normal(0.0, 1.0).expand([k_inv]).to_event(1)
                )
            z = numpyro.sample(
                "z",
                lagged_transition(
                    config.prior, fn, shift, jnp.exp(log_sigma + domain_log_scale),
                    jnp.exp(domain_log_scale) if config.modulate_history else 1.0,
                    base=config.flow_base, initial_shift=config.modulate_history,
                    n_steps=n_steps, n_lags=lags, per_step=jnp.ndim(u) == 2,
                    weight_shift=weights,
                ),
            )
        h = z if z_inv is None else jnp.concatenate(
            [jnp.broadcast_to(z_inv[:, None, :], (n_batch, n_steps, k_inv)), z], axis=-1
        )
        out = decoder(h)
        with numpyro.plate("units", n_batch, dim=-2), numpyro.plate("steps", n_steps, dim=-1):
            x = numpyro.sample("x", observation(config, out, library_size).to_event(1), obs=x)
    return {"z_inv": z_inv, "z": z, "lag_graph": lag_graph, "target": target, "x": x}


def forecast(params, key, u, *, prefix=None, z_inv=None, n_steps: int, n_features: int,
             n_domains: int, config: DynamicalConfig = DEFAULT_CONFIG, library_size=None):
    """One posterior-predictive draw of whole sequences under domain labels ``u``.

    The global latents (lag graph, targets, shifts, lag-weight changes) are drawn from the
    fitted guide's global factors (``params``: the fitted parameters); the paths are drawn
    from the model's transition under ``u`` (per unit ``(units,)`` or per step ``(units,
    n_steps)``) and decoded, the observations drawn from the likelihood. With ``prefix``
    ``(units, s, k)`` (``s >= n_lags``), steps ``0..s-1`` are held at it and only steps
    ``s..n_steps-1`` are drawn (a forecast from an observed history); ``z_inv`` holds the
    invariant block (default: drawn from its prior). Pure JAX: ``jax.jit`` / ``jax.vmap``
    it over keys.

    Returns
    -------
    z, x
        ``(units, n_steps, k)`` paths and ``(units, n_steps, n_features)`` observations.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro import handlers
    >>> cfg = DynamicalConfig(n_latent=2, n_hidden=8, n_layers=1)
    >>> u, x = jnp.zeros(3, jnp.int32), jnp.zeros((3, 4, 5))
    >>> sites = {**handlers.trace(handlers.seed(dynamical_model, 0)).get_trace(
    ...     x=x, u=u, n_domains=1, config=cfg), **handlers.trace(handlers.seed(
    ...     dynamical_guide, 0)).get_trace(x=x, u=u, n_domains=1, config=cfg)}
    >>> params = {k: v["value"] for k, v in sites.items() if v["type"] == "param"}
    >>> z, x_new = forecast(params, jax.random.key(0), u, n_steps=6, n_features=5,
    ...                     n_domains=1, config=cfg)
    >>> z.shape, x_new.shape
    ((3, 6, 2), (3, 6, 5))
    """
    k_globals, k_model, k_path, k_obs = jax.random.split(key, 4)
    guide = handlers.substitute(handlers.seed(global_guide, k_globals), data=params)
    drawn = {name: site["value"] for name, site in
             handlers.trace(guide).get_trace(n_domains, config=config).items()
             if site["type"] == "sample"}
    held = {**drawn, **({} if z_inv is None else {"z_inv": z_inv})}
    model = handlers.substitute(handlers.condition(dynamical_model, data=held), data=params)
    kwargs = dict(u=u, n_steps=n_steps, n_features=n_features, n_domains=n_domains,
                  config=config, library_size=library_size)
    trace = handlers.trace(handlers.seed(model, k_model)).get_trace(**kwargs)
    if prefix is None:  # the model's own draw is the prediction
        return trace["z"]["value"], trace["x"]["value"]
    z = trace["z"]["fn"].forecast(k_path, prefix)
    observed = handlers.trace(handlers.seed(handlers.condition(model, data={"z": z}), k_obs))
    return z, observed.get_trace(**kwargs)["x"]["value"]


def observation(config: DynamicalConfig, out, library_size):
    """``p(x | decoder output)``: the configured likelihood, or a Gaussian with the fixed
    ``config.observation_scale``."""
    if config.observation_scale is not None:
        return dist.Normal(out, config.observation_scale)
    return config.likelihood_block(out, library_size)


def global_guide(n_domains: int, *, config: DynamicalConfig = DEFAULT_CONFIG):
    """The guide's global factors: lag graph, domain targets, mean and log-scale shifts
    (and the lag-weight changes when ``config.weight_shift_scale`` is set)."""
    k, lags = config.n_latent, config.n_lags
    graph_logits = numpyro.param(
        "lag_graph_logits", jnp.full((k, lags, k), _logit(config.edge_probability))
    )
    shape = (n_domains, k)
    target_logits = numpyro.param(
        "target_logits", jnp.full(shape, _logit(config.target_probability))
    )
    factors = {
        name: (numpyro.param(f"{name}_loc", jnp.zeros(shape)),
               jnp.exp(numpyro.param(f"{name}_log_scale", jnp.full(shape, -2.0))))
        for name in ("mean_shift", "log_scale_shift")
    }
    if config.weight_shift_scale is not None:
        change_shape = (n_domains, k, lags, k)
        change = (numpyro.param("weight_shift_loc", jnp.zeros(change_shape)),
                  jnp.exp(numpyro.param("weight_shift_log_scale",
                                        jnp.full(change_shape, -2.0))))
    with numpyro.plate("latents", k, dim=-1):
        lag_graph = numpyro.sample(
            "lag_graph", StraightThroughBernoulli(graph_logits).to_event(2)
        )
        with numpyro.plate("domains", n_domains, dim=-2):
            target = numpyro.sample("target", StraightThroughBernoulli(target_logits))
            draws = {
                name: numpyro.sample(name, dist.Normal(loc, scale))
                for name, (loc, scale) in factors.items()
            }
            if config.weight_shift_scale is not None:
                draws["weight_shift"] = numpyro.sample(
                    "weight_shift", dist.Normal(*change).to_event(2)
                )
    return {"lag_graph": lag_graph, "target": target, **draws}


def encoder_input(x, likelihood: Likelihood):
    """What the encoders see: ``log1p`` counts for count likelihoods, ``x`` otherwise."""
    return jnp.log1p(x) if likelihood.count_data else x


def _gaussian_encoder(name, in_features, n_latent, config):
    net = attach(name, lambda rngs: config.network(name)(in_features, 2 * n_latent, rngs=rngs))

    def encode(h):
        loc, raw = jnp.split(net(h), 2, axis=-1)
        return loc, jax.nn.softplus(raw) + 1e-4

    return encode


def step_windows(h, context: int):
    """``h (units, steps, f) -> (units, steps, (2 context + 1) f)``: each step's features
    next to those of the ``context`` steps before and after it, the first and last steps
    repeated past the ends (``context=0`` returns ``h``).

    Examples
    --------
    >>> step_windows(jnp.arange(3.0)[None, :, None], 1)[0].tolist()
    [[0.0, 0.0, 1.0], [0.0, 1.0, 2.0], [1.0, 2.0, 2.0]]
    """
    if context == 0:
        return h
    n_steps = h.shape[1]
    idx = jnp.clip(jnp.arange(n_steps)[:, None] + jnp.arange(-context, context + 1), 0,
                   n_steps - 1)
    return h[:, idx, :].reshape(h.shape[0], n_steps, -1)


def step_posterior(name, in_features, config):
    """``h (..., features) -> q(z_t | x_t)``, event shape ``(n_latent,)``: a diagonal normal
    or, with ``config.posterior == "full"``, a multivariate normal with a full Cholesky
    factor (attaches the network ``name``)."""
    k = config.n_latent
    if config.posterior == "diagonal":
        encode = _gaussian_encoder(name, in_features, k, config)

        def diagonal(h):
            loc, scale = encode(h)
            return dist.Normal(loc, scale).to_event(1)

        return diagonal
    n_out = 2 * k + k * (k - 1) // 2
    net = attach(name, lambda rngs: config.network(name)(in_features, n_out, rngs=rngs))

    def full(h):
        out = net(h)
        loc, raw, lower = out[..., :k], out[..., k:2 * k], out[..., 2 * k:]
        return dist.MultivariateNormal(
            loc, scale_tril=scale_tril(jax.nn.softplus(raw) + 1e-4, lower)
        )

    return full


def dynamical_guide(
    x=None,
    u=None,
    library_size=None,
    *,
    n_units: int | None = None,
    n_cells: int | None = None,
    n_steps: int | None = None,
    n_features: int | None = None,
    n_domains: int | None = None,
    config: DynamicalConfig = DEFAULT_CONFIG,
):
    """Amortised guide: per-step ``q(z_t | x_t)``, ``q(z_inv | x_{0:T})``, global factors."""
    if x is None:
        raise CausalZooError("The guide needs the observed `x` (it is amortised over units).")
    n_batch, n_steps, n_features = _shapes(x, u, n_steps, n_features, n_domains)
    global_guide(n_domains, config=config)
    h = encoder_input(x, config.likelihood_block)
    context = step_windows(h, config.encoder_context)
    posterior = step_posterior("encoder", context.shape[-1], config)
    with _scaled(n_batch, n_units or n_cells), numpyro.plate("units", n_batch, dim=-1):
        if config.n_latent_invariant:
            encode_inv = _gaussian_encoder(
                "encoder_invariant", n_features, config.n_latent_invariant, config
            )
            loc_inv, scale_inv = encode_inv(h.mean(axis=1))
            numpyro.sample("z_inv", dist.Normal(loc_inv, scale_inv).to_event(1))
        numpyro.sample("z", posterior(context).to_event(1))
