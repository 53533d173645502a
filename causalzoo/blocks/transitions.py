"""Lagged transition priors of latent processes ``z_{0:T}``: conditional Gaussian and flow.

A lagged transition scores a whole latent path at once: the first ``L`` steps are an
initial law, and step ``t >= L`` is drawn given its window ``[z_{t-1}, ..., z_{t-L}]`` by a
per-variable mechanism whose parents are gated by a lag graph. Two step laws:

* **conditional Gaussian** (:class:`LaggedTransition`)::

      z_t,i = f_i(window_t) + shift_i + scale_i * eps_t,i,      eps ~ N(0, 1)

* **flow** (:class:`FlowLaggedTransition`, LEAP / TDRL style): a learned inverse transition
  maps ``z_t`` and its history to the noise, component-wise given the history::

      v_t,i   = (z_t,i - f_i(window_t) - shift_i) / (scale_i * exp(s_i(window_t)))
      eps_t,i = sinh(exp(tau_i(window_t)) * asinh(v_t,i) - skew_i(window_t))
      log p(z_t | window_t) = sum_i log p_base(eps_t,i) + log |d eps_t,i / d z_t,i|

  The map ``z_t,i -> eps_t,i`` is strictly increasing and depends on no other coordinate of
  ``z_t``, so the Jacobian is diagonal and its log-determinant is exact (computed with
  ``jax.jvp``). The sinh-arcsinh factor (Jones & Pewsey 2009) gives the noise a learned
  skewness (``skew``) and tail weight (``tau``: heavier tails below 0); with ``s = skew =
  tau = 0`` and a normal base it is the conditional Gaussian. The base is ``N(0, 1)`` or a
  unit-variance Laplace. The inverse has a closed form, so sampling needs no root finding.
  With linear mechanisms ``f`` is a sparse VAR and ``s = 0``, unless ``history_scale=True``
  makes ``s`` a learned function of the masked window (a linear mean whose noise scale
  follows the history).

:func:`transition_mean` and :func:`flow_transition` declare the mechanism's parameters
(``numpyro.param``, plus an NNX network for nonlinear residuals) inside a model and return
the function of the window that the distributions take.

References
----------
- Yao et al., *Learning Temporally Causal Latent Processes from General Temporal Data*,
  ICLR 2022 (LEAP): learned inverse transition and its Jacobian as the prior.
- Yao et al., *Temporally Disentangled Representation Learning*, NeurIPS 2022 (TDRL).
- Jones & Pewsey, *Sinh-arcsinh distributions*, Biometrika 96 (2009).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import lax
from numpyro.distributions import constraints

from .._errors import CausalZooError
from .nn import MLP, attach

__all__ = [
    "FLOW_BASES",
    "PRIORS",
    "FlowLaggedTransition",
    "FlowParams",
    "LaggedTransition",
    "base_distribution",
    "flow_forward",
    "flow_inverse",
    "flow_log_prob",
    "flow_transition",
    "lag_windows",
    "lagged_transition",
    "normal_to_base",
    "scan_lagged",
    "transition_mean",
]

PRIORS = ("gaussian", "flow")
"""Names of the transition priors: conditional Gaussian, and the flow prior."""
FLOW_BASES = ("normal", "laplace")
"""Names of the flow prior's base noise distributions (both with unit variance)."""
FLOW_OUTPUTS = 4  # per child: mean residual, log-scale, skew, log tail weight
_SKEW_BOUND, _TAIL_BOUND = 2.0, 1.0


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise CausalZooError(f"{name}={value!r}: use one of {list(choices)}.")


def base_distribution(name: str = "normal") -> dist.Distribution:
    """The flow prior's base noise: ``"normal"`` N(0, 1) or ``"laplace"`` (unit variance).

    Examples
    --------
    >>> base_distribution("laplace").variance
    Array(1., dtype=float32, weak_type=True)
    """
    _check_choice("flow_base", name, FLOW_BASES)
    if name == "laplace":
        return dist.Laplace(0.0, 1.0 / math.sqrt(2.0))
    return dist.Normal(0.0, 1.0)


def normal_to_base(noise, base: str = "normal"):
    """Map standard-normal draws to draws of the base by matching quantiles (identity for
    ``"normal"``); accurate in both tails, so fixed normal quadrature nodes can drive a flow
    with another base.

    Examples
    --------
    >>> normal_to_base(jnp.array([-1.0, 0.0, 1.0]), "laplace").round(4)
    Array([-0.8117, -0.    ,  0.8117], dtype=float32)
    """
    _check_choice("flow_base", base, FLOW_BASES)
    if base == "normal":
        return noise
    tail = jax.scipy.special.ndtr(-jnp.abs(noise))  # P(N < -|n|), <= 1/2
    return -jnp.sign(noise) * jnp.log(2.0 * tail) / math.sqrt(2.0)


class FlowParams(NamedTuple):
    """The flow step's parameters given the history, each ``(..., k)``.

    ``loc`` is the mechanism's mean ``f(window)`` (without the domain shift), ``log_scale``
    the history-dependent log-scale ``s(window)`` (added to the domain's), ``skew`` and
    ``log_tail`` the sinh-arcsinh shape (``0, 0``: Gaussian-shaped noise).
    """

    loc: jax.Array
    log_scale: jax.Array
    skew: jax.Array
    log_tail: jax.Array


def flow_inverse(z, loc, scale, skew, log_tail):
    """The inverse transition ``z -> eps``, element-wise and strictly increasing in ``z``.

    ``eps = sinh(exp(log_tail) * asinh((z - loc) / scale) - skew)``.

    Examples
    --------
    >>> float(flow_inverse(jnp.asarray(3.0), 1.0, 2.0, 0.0, 0.0))
    1.0
    """
    v = (z - loc) / scale
    return jnp.sinh(jnp.exp(log_tail) * jnp.arcsinh(v) - skew)


def flow_forward(eps, loc, scale, skew, log_tail):
    """The transition ``eps -> z``, the exact inverse of :func:`flow_inverse`.

    Examples
    --------
    >>> float(flow_forward(jnp.asarray(1.0), 1.0, 2.0, 0.0, 0.0))
    3.0
    """
    v = jnp.sinh((jnp.arcsinh(eps) + skew) * jnp.exp(-log_tail))
    return loc + scale * v


def flow_log_prob(z, loc, scale, skew, log_tail, base: str = "normal"):
    """Element-wise ``log p(z | history) = log p_base(eps) + log |d eps / d z|``.

    The derivative is the forward-mode derivative of :func:`flow_inverse` along a tangent of
    ones: since each ``eps_i`` depends on ``z_i`` only (given the history, which enters
    through ``loc, scale, skew, log_tail``), that is exactly the Jacobian's diagonal.

    Parameters
    ----------
    z : array (..., k)
    loc, scale, skew, log_tail : arrays broadcastable to ``z``
    base : {"normal", "laplace"}

    Returns
    -------
    array (..., k)
        Per-coordinate log-densities (sum over the last axis for the step's).

    Examples
    --------
    >>> z = jnp.array([0.3, -1.2])
    >>> lp = flow_log_prob(z, 0.0, 1.0, 0.0, 0.0)  # the standard normal
    >>> bool(jnp.allclose(lp, jax.scipy.stats.norm.logpdf(z)))
    True
    """
    z = jnp.broadcast_to(z, jnp.broadcast_shapes(jnp.shape(z), jnp.shape(loc), jnp.shape(scale),
                                                 jnp.shape(skew), jnp.shape(log_tail)))
    eps, d_eps = jax.jvp(lambda v: flow_inverse(v, loc, scale, skew, log_tail), (z,),
                         (jnp.ones_like(z),))
    return base_distribution(base).log_prob(eps) + jnp.log(jnp.abs(d_eps))


def lag_windows(value, n_lags: int):
    """The lagged windows ``(..., T - L, L, k)`` of a path ``(..., T, k)`` (lag 1 first).

    Examples
    --------
    >>> lag_windows(jnp.arange(4.0)[:, None], 2)[..., 0]
    Array([[1., 0.],
           [2., 1.]], dtype=float32)
    """
    n_steps = jnp.shape(value)[-2]
    return jnp.stack(
        [value[..., n_lags - lag : n_steps - lag, :] for lag in range(1, n_lags + 1)], axis=-2
    )


def scan_lagged(step, initial, eps):
    """Run a lagged recursion with ``lax.scan``: the carry is the window of the last ``L``
    states (lag 1 first), ``step(window, eps_t) -> (z_t, output_t)`` makes the next state.

    Parameters
    ----------
    step : callable
        ``(window (..., L, k), eps_t) -> (z_t (..., k), output_t)`` (any pytree output).
    initial : array (..., L, k)
        The first ``L`` states in time order.
    eps : array (n, ...) or pytree of them
        The noise (and any other per-step input) of the ``n`` later steps, time first;
        ``step`` gets step ``t``'s slice.

    Returns
    -------
    The outputs of the ``n`` steps stacked on a leading time axis.

    Examples
    --------
    >>> out = scan_lagged(lambda w, e: (w[..., 0, :] + e, w[..., 0, :] + e),
    ...                   jnp.zeros((1, 1)), jnp.ones((3, 1)))
    >>> out[:, 0]
    Array([1., 2., 3.], dtype=float32)
    """

    def scan_step(window, e):  # window (..., L, k), lag 1 first
        z, output = step(window, e)
        return jnp.concatenate([z[..., None, :], window[..., :-1, :]], axis=-2), output

    return lax.scan(scan_step, jnp.flip(initial, axis=-2), eps)[1]


class _LaggedPath(dist.Distribution):
    """Shared machinery of the path distributions: the initial law of the first ``L``
    steps, the lagged windows, the per-unit (or per-step) domain arguments, and prior
    sampling by ``lax.scan`` over a step function.

    ``shift``, ``scale`` and ``initial_scale`` are ``(..., k)`` (one value per unit) or,
    with ``per_step=True``, ``(..., T, k)`` (step ``t``'s value acts on the law of
    ``z_t``: labels per step). ``weight_shift`` (optional) adds to the linear lag weights:
    ``(..., k, L, k)`` indexed ``[child, lag, parent]``, or ``(..., T, k, L, k)`` per step;
    step ``t`` then gains ``sum_{l, j} weight_shift[i, l, j] z_{t-l-1, j}`` in the mean
    of ``z_{t, i}`` (a domain that changes the dynamics, as in TDRL)."""

    arg_constraints = {
        "shift": constraints.real,
        "scale": constraints.positive,
        "initial_scale": constraints.positive,
    }
    pytree_data_fields = ("shift", "scale", "initial_scale", "weight_shift")
    pytree_aux_fields = ("n_lags", "initial_shift", "per_step")
    support = constraints.independent(constraints.real, 2)
    reparametrized_params = ["shift", "scale", "initial_scale"]

    def __init__(self, shift, scale, initial_scale, *, initial_shift: bool, n_steps: int,
                 n_lags: int, per_step: bool = False, weight_shift=None, validate_args=None):
        if n_steps <= n_lags:
            raise CausalZooError(
                f"Sequences of {n_steps} steps are too short for {n_lags} lag(s): need at "
                "least n_lags + 1 steps. Use fewer lags or longer sequences."
            )
        self.n_lags = n_lags
        self.initial_shift = bool(initial_shift)
        self.per_step = bool(per_step)
        self.shift, self.scale, self.initial_scale = jnp.broadcast_arrays(
            shift, scale, initial_scale
        )
        k = jnp.shape(self.shift)[-1]
        unit_axes = -2 if self.per_step else -1
        if self.per_step and (jnp.ndim(self.shift) < 2 or jnp.shape(self.shift)[-2] != n_steps):
            raise CausalZooError(
                f"Per-step shifts need shape (..., {n_steps}, k); got "
                f"{jnp.shape(self.shift)}."
            )
        batch_shape = jnp.shape(self.shift)[:unit_axes]
        if weight_shift is not None:
            expected = ((n_steps,) if self.per_step else ()) + (k, n_lags, k)
            if tuple(jnp.shape(weight_shift)[-len(expected):]) != expected:
                raise CausalZooError(
                    f"weight_shift must end in {expected} ([step,] child, lag, parent); got "
                    f"{jnp.shape(weight_shift)}."
                )
            batch_shape = jnp.broadcast_shapes(batch_shape,
                                               jnp.shape(weight_shift)[:-len(expected)])
        self.weight_shift = weight_shift
        super().__init__(
            batch_shape=batch_shape,
            event_shape=(n_steps, k),
            validate_args=validate_args,
        )

    def windows(self, value):
        """The lagged windows ``(..., T - L, L, k)`` of a path (lag 1 first)."""
        return lag_windows(value, self.n_lags)

    def _later(self, a, event_dims=1):
        """A per-unit or per-step argument aligned with steps ``L..T-1`` (time axis before
        its last ``event_dims`` axes)."""
        if self.per_step:
            return a[(..., slice(self.n_lags, None)) + (slice(None),) * event_dims]
        return jnp.expand_dims(a, -1 - event_dims)

    def _initial(self, a):
        return a[..., :self.n_lags, :] if self.per_step else a[..., None, :]

    def _weight_term(self, window, weight_shift):
        """The domain's lag-weight change at a window ``(..., L, k)``, ``(..., k)``."""
        if weight_shift is None:
            return 0.0
        return (window[..., None, :, :] * weight_shift).sum((-2, -1))

    def _later_loc_shift(self, value):
        """What the domain adds to the means of steps ``L..T-1``: its mean shift plus the
        lag-weight change, ``(..., T - L, k)``."""
        # This computes the path's windows again, as the callers do: XLA fuses the graph as
        # written, and computing them once changes float32 rounding enough to move the
        # recorded fits (docs/models/dynamical_measurements.md), so the graph is kept as measured.
        shift = self._later(self.shift)
        if self.weight_shift is None:
            return shift
        return shift + self._weight_term(self.windows(value),
                                         self._later(self.weight_shift, event_dims=3))

    def _initial_log_prob(self, value):
        lags = self.n_lags
        initial_loc = self._initial(self.shift) if self.initial_shift else 0.0
        initial = dist.Normal(initial_loc, self._initial(self.initial_scale))
        return initial.log_prob(value[..., :lags, :]).sum(-1)

    def _later_log_prob(self, value):  # pragma: no cover - interface
        raise NotImplementedError

    def step_log_prob(self, value):
        """Log-density of each step given its history, ``(..., T)`` (sums to ``log_prob``)."""
        return jnp.concatenate([self._initial_log_prob(value), self._later_log_prob(value)],
                               axis=-1)

    def log_prob(self, value):
        return self.step_log_prob(value).sum(-1)

    def _noise(self, key, shape):
        return jax.random.normal(key, shape)

    def _step(self, window, eps, shift, scale):  # pragma: no cover - interface
        raise NotImplementedError

    def sample(self, key, sample_shape=()):
        lags, k = self.n_lags, self.event_shape[1]
        shape = sample_shape + self.batch_shape
        key_init, key_eps = jax.random.split(key)
        initial = jax.random.normal(key_init, shape + (lags, k))
        initial = self._initial(self._full(self.initial_scale, shape, (k,))) * initial
        if self.initial_shift:
            initial = initial + self._initial(self._full(self.shift, shape, (k,)))
        return self._roll(key_eps, initial, shape)

    def forecast(self, key, prefix, sample_shape=()):
        """Continue given paths: ``prefix (..., s, k)`` holds steps ``0..s-1`` (``L <= s
        <= T``); steps ``s..T-1`` are drawn from the transition with this distribution's
        (per-unit or per-step) arguments. Returns ``sample_shape + batch_shape + (T, k)``,
        the prefix included unchanged.

        Examples
        --------
        >>> import jax, jax.numpy as jnp
        >>> d = LaggedTransition(lambda w: w[..., 0, :], jnp.zeros((2, 1)),
        ...                      jnp.full((2, 1), 1e-6), n_steps=4, n_lags=1)
        >>> d.forecast(jax.random.key(0), jnp.array([[[1.0]], [[2.0]]]))[..., 0].round(3)
        Array([[1., 1., 1., 1.],
               [2., 2., 2., 2.]], dtype=float32)
        """
        n_steps, k = self.event_shape
        s = jnp.shape(prefix)[-2]
        if not self.n_lags <= s <= n_steps or jnp.shape(prefix)[-1] != k:
            raise CausalZooError(
                f"A forecast starts from steps 0..s-1 of the paths, shape (..., s, {k}) with "
                f"{self.n_lags} <= s <= {n_steps} (at least the {self.n_lags} lag(s)); got "
                f"{jnp.shape(prefix)}."
            )
        shape = sample_shape + self.batch_shape
        return self._roll(key, jnp.broadcast_to(prefix, shape + (s, k)), shape)

    def _full(self, a, shape, event):
        return jnp.broadcast_to(a, shape + ((self.event_shape[0],) if self.per_step else ())
                                + event)

    def _roll(self, key, initial, shape):
        """Steps ``s..T-1`` after ``initial`` (``shape + (s, k)``, ``s >= L``), by
        ``lax.scan``; returns the whole path."""
        lags, (n_steps, k) = self.n_lags, self.event_shape
        start = initial.shape[-2]
        events = ((k,), (k,), (k, lags, k))
        args = tuple(None if a is None else self._full(a, shape, event)
                     for a, event in zip((self.shift, self.scale, self.weight_shift), events,
                                         strict=True))
        if self.per_step:  # steps start.. of each argument ride along the scan, time first
            args = tuple(None if a is None else jnp.moveaxis(
                             a[(..., slice(start, None)) + (slice(None),) * len(event)],
                             -1 - len(event), 0)
                         for a, event in zip(args, events, strict=True))
        eps = self._noise(key, (n_steps - start,) + shape + (k,))

        def step(window, inputs):
            e, step_args = inputs
            shift, scale, weights = step_args if self.per_step else args
            z = self._step(window, e, shift + self._weight_term(window, weights), scale)
            return z, z

        later = scan_lagged(step, initial[..., start - lags:, :],
                            (eps, args if self.per_step else None))
        return jnp.concatenate([initial, jnp.moveaxis(later, 0, -2)], axis=-2)

    @property
    def mean(self):
        raise NotImplementedError("The path mean has no closed form for nonlinear mechanisms.")


class LaggedTransition(_LaggedPath):
    """Distribution of a latent path ``z_{0:T}`` of ``k`` variables under an ``L``-lag prior.

    The first ``n_lags`` steps are ``Normal(shift, initial_scale)`` (``Normal(0,
    initial_scale)`` with ``initial_shift=False``); step ``t >= L`` is
    ``Normal(mean_fn(window_t) + shift, scale)`` with ``window_t`` the ``(L, k)`` array
    ``[z_{t-1}, ..., z_{t-L}]``. ``log_prob`` scores a whole path at once (all windows are
    slices of the value); ``sample`` runs the recursion with ``lax.scan``.

    Parameters
    ----------
    mean_fn : callable
        ``(..., L, k) -> (..., k)``, the transition mean given the lagged window.
    shift : array (..., k)
        Per-unit additive mean shift (the domain's).
    scale : array (..., k)
        Per-unit noise scale.
    initial_scale : array (..., k), optional
        Per-unit scale of the first ``n_lags`` steps (default 1).
    initial_shift : bool
        Whether ``shift`` applies to the first ``n_lags`` steps too.
    n_steps, n_lags : int
        Path length ``T`` and number of lags ``L`` (``T > L``).
    per_step : bool
        ``shift``, ``scale`` and ``initial_scale`` carry a time axis, ``(..., T, k)``:
        labels per step, step ``t``'s value acting on the law of ``z_t``.
    weight_shift : array (..., k, L, k) or (..., T, k, L, k), optional
        Per-unit (per-step) change of the linear lag weights, ``[child, lag, parent]``,
        added to the mean: a domain that changes the dynamics (TDRL).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> d = LaggedTransition(lambda w: 0.5 * w[..., 0, :], jnp.zeros((3, 2)), jnp.ones((3, 2)),
    ...                      n_steps=5, n_lags=1)
    >>> z = d.sample(jax.random.key(0))
    >>> z.shape, d.log_prob(z).shape
    ((3, 5, 2), (3,))
    """

    pytree_aux_fields = ("mean_fn",)

    def __init__(self, mean_fn, shift, scale, initial_scale=1.0, *, initial_shift: bool = True,
                 n_steps: int, n_lags: int, per_step: bool = False, weight_shift=None,
                 validate_args=None):
        self.mean_fn = mean_fn
        super().__init__(shift, scale, initial_scale, initial_shift=initial_shift,
                         n_steps=n_steps, n_lags=n_lags, per_step=per_step,
                         weight_shift=weight_shift, validate_args=validate_args)

    def transition_loc(self, value):
        """Mean of steps ``L..T-1`` given the path, ``(..., T - L, k)``."""
        return self.mean_fn(self.windows(value)) + self._later_loc_shift(value)

    def _later_log_prob(self, value):
        later = dist.Normal(self.transition_loc(value), self._later(self.scale))
        return later.log_prob(value[..., self.n_lags:, :]).sum(-1)

    def _step(self, window, eps, shift, scale):
        return self.mean_fn(window) + shift + scale * eps


class FlowLaggedTransition(_LaggedPath):
    """A latent path under the flow prior: a learned inverse transition plus its Jacobian.

    The first ``n_lags`` steps are as in :class:`LaggedTransition`. Step ``t >= L`` is
    scored through its noise: with ``p = flow_fn(window_t)`` (a :class:`FlowParams`),
    ``eps_t = flow_inverse(z_t, p.loc + shift, scale * exp(p.log_scale), p.skew,
    p.log_tail)`` and ``log p(z_t | window_t) = log p_base(eps_t) + log |d eps_t / d z_t|``
    (:func:`flow_log_prob`; the Jacobian is diagonal). ``shift`` and ``scale`` carry the
    domain's mean shift and noise scale, so a domain changes the mechanism exactly as under
    the Gaussian prior, and the shape of the noise is learned on top.

    Parameters
    ----------
    flow_fn : callable
        ``window (..., L, k) -> FlowParams`` of ``(..., k)`` arrays.
    shift, scale, initial_scale, initial_shift, n_steps, n_lags, per_step, weight_shift
        As in :class:`LaggedTransition`.
    base : {"normal", "laplace"}
        Base distribution of the noise ``eps`` (unit variance).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> def flow_fn(w):
    ...     zero = jnp.zeros_like(w[..., 0, :])
    ...     return FlowParams(0.5 * w[..., 0, :], zero, zero + 0.3, zero - 0.2)
    >>> d = FlowLaggedTransition(flow_fn, jnp.zeros((3, 2)), jnp.ones((3, 2)), n_steps=5,
    ...                          n_lags=1, base="laplace")
    >>> z = d.sample(jax.random.key(0))
    >>> z.shape, d.log_prob(z).shape, d.inverse(z).shape
    ((3, 5, 2), (3,), (3, 4, 2))
    """

    pytree_aux_fields = ("flow_fn", "base")

    def __init__(self, flow_fn, shift, scale, initial_scale=1.0, *, base: str = "normal",
                 initial_shift: bool = True, n_steps: int, n_lags: int, per_step: bool = False,
                 weight_shift=None, validate_args=None):
        _check_choice("flow_base", base, FLOW_BASES)
        self.flow_fn = flow_fn
        self.base = base
        super().__init__(shift, scale, initial_scale, initial_shift=initial_shift,
                         n_steps=n_steps, n_lags=n_lags, per_step=per_step,
                         weight_shift=weight_shift, validate_args=validate_args)

    def step_params(self, window, shift, scale):
        """``(loc, scale, skew, log_tail)`` of the step given its window and the domain's
        ``shift`` and ``scale`` (broadcast against ``window``'s leading axes)."""
        p = self.flow_fn(window)
        return p.loc + shift, scale * jnp.exp(p.log_scale), p.skew, p.log_tail

    def _later_params(self, value):
        return self.step_params(self.windows(value), self._later_loc_shift(value),
                                self._later(self.scale))

    def inverse(self, value):
        """The noise ``eps`` of steps ``L..T-1`` of a path, ``(..., T - L, k)``."""
        return flow_inverse(value[..., self.n_lags:, :], *self._later_params(value))

    def _later_log_prob(self, value):
        return flow_log_prob(value[..., self.n_lags:, :], *self._later_params(value),
                             base=self.base).sum(-1)

    def _noise(self, key, shape):
        return base_distribution(self.base).sample(key, shape)

    def _step(self, window, eps, shift, scale):
        return flow_forward(eps, *self.step_params(window, shift, scale))


def lagged_transition(prior: str, fn, shift, scale, initial_scale=1.0, *,
                      base: str = "normal", initial_shift: bool = True, n_steps: int,
                      n_lags: int, per_step: bool = False, weight_shift=None):
    """The path distribution of a prior by name: ``"gaussian"`` gives
    :class:`LaggedTransition` (``fn`` is the mean function), ``"flow"`` gives
    :class:`FlowLaggedTransition` (``fn`` returns :class:`FlowParams`).

    Examples
    --------
    >>> d = lagged_transition("gaussian", lambda w: w[..., 0, :], jnp.zeros((2, 1)),
    ...                       jnp.ones((2, 1)), n_steps=3, n_lags=1)
    >>> type(d).__name__
    'LaggedTransition'
    """
    _check_choice("prior", prior, PRIORS)
    if prior == "flow":
        return FlowLaggedTransition(fn, shift, scale, initial_scale, base=base,
                                    initial_shift=initial_shift, n_steps=n_steps,
                                    n_lags=n_lags, per_step=per_step,
                                    weight_shift=weight_shift)
    return LaggedTransition(fn, shift, scale, initial_scale, initial_shift=initial_shift,
                            n_steps=n_steps, n_lags=n_lags, per_step=per_step,
                            weight_shift=weight_shift)


# ---------------------------------------------------------------- mechanisms inside a model


def _residual_mlp(in_features, out_features, *, rngs, **kwargs):
    """An MLP without LayerNorm whose output layer starts at zero: the nonlinear residual of
    the transition starts switched off and grows where the data ask for it."""
    net = MLP(in_features, out_features, rngs=rngs, layer_norm=False, **kwargs)
    net.out.kernel[...] = jnp.zeros_like(net.out.kernel[...])
    return net


def _mechanism(lag_graph, n_outputs, *, factory, n_hidden, n_layers, activation):
    """Declare the sparse linear part (and, when ``n_outputs > 0``, the network over the
    masked windows) of the mechanisms; return ``(linear, network)``, ``network`` None without
    outputs or ``window (..., L, k) -> (..., k, n_outputs)``."""
    k, lags = lag_graph.shape[-1], lag_graph.shape[-2]
    weights = numpyro.param("transition_weights", jnp.zeros((k, lags, k)))

    def linear(window):
        return jnp.einsum("...lj,ilj->...i", window, weights * lag_graph)

    if n_outputs == 0:
        return linear, None
    factory = factory or partial(
        _residual_mlp, n_hidden=n_hidden, n_layers=max(n_layers, 1), activation=activation,
    )
    net = attach("transition", lambda rngs: factory(lags * k + k, n_outputs, rngs=rngs))
    identity = jnp.eye(k)

    def residual(window):
        masked = window[..., None, :, :] * lag_graph  # (..., k_child, L, k_parent)
        flat = masked.reshape(masked.shape[:-2] + (lags * k,))
        which = jnp.broadcast_to(identity, flat.shape[:-1] + (k,))
        return net(jnp.concatenate([flat, which], axis=-1))

    return linear, residual


def transition_mean(lag_graph, *, kind: str = "mlp", factory: Callable | None = None,
                    n_hidden: int = 64, n_layers: int = 2, activation: str = "leaky_relu",
                    history_scale: bool = False):
    """The conditional-Gaussian mechanism ``window (..., L, k) -> (..., k)``; declares its
    parameters (call inside a model).

    ``lag_graph`` is ``(k, L, k)``: entry ``[i, l, j]`` gates parent ``z_{t-l-1, j}`` of
    child ``z_{t, i}``; a child's masked window is all the mechanism sees of the past. The
    linear part (``numpyro.param`` ``"transition_weights"``) is always there; ``kind="mlp"``
    adds a nonlinear residual, one network ``"transition"`` shared by the variables and told
    which one it computes by a one-hot input. The default network has no LayerNorm
    (normalising the hidden layer would make the mechanism blind to the scale of its
    parents) and its output layer starts at zero.

    Parameters
    ----------
    lag_graph : array (k, L, k)
    kind : {"mlp", "linear"}
    factory : callable, optional
        Custom network, ``factory(L * k + k, 1, rngs=...) -> nnx.Module``.
    n_hidden, n_layers, activation
        The default residual network's width, depth (at least 1) and activation.
    history_scale : bool
        Refused (``True`` raises): the conditional Gaussian's noise scale does not depend
        on the history; :func:`flow_transition` takes it.

    Examples
    --------
    >>> from numpyro import handlers
    >>> with handlers.seed(rng_seed=0):
    ...     mean_fn = transition_mean(jnp.ones((2, 1, 2)), kind="linear")
    >>> mean_fn(jnp.ones((5, 1, 2))).shape
    (5, 2)
    """
    if history_scale:
        raise CausalZooError(
            "history_scale=True needs the flow prior (prior='flow'): the conditional "
            "Gaussian's noise scale does not depend on the history."
        )
    linear, residual = _mechanism(lag_graph, 0 if kind == "linear" else 1, factory=factory,
                                  n_hidden=n_hidden, n_layers=n_layers,
                                  activation=activation)
    if residual is None:
        return linear

    def mlp(window):
        return linear(window) + residual(window)[..., 0]

    return mlp


def flow_transition(lag_graph, *, kind: str = "mlp", factory: Callable | None = None,
                    n_hidden: int = 64, n_layers: int = 2, activation: str = "leaky_relu",
                    history_scale: bool = False):
    """The flow prior's conditional inverse ``window (..., L, k) -> FlowParams``; declares
    its parameters (call inside a model).

    The mean is the mechanism of :func:`transition_mean` (same sites). The noise shape is a
    per-variable skew and log tail weight (``numpyro.param`` ``"flow_skew"``,
    ``"flow_log_tail"``, starting at 0: Gaussian-shaped noise). With ``kind="mlp"`` the
    residual network has four outputs per variable (mean, log-scale, skew and log tail
    residuals, all starting at 0), so the whole inverse depends on the history (TDRL's
    ``r_i(z_t,i, z_hist)``); with ``kind="linear"`` it is a sparse VAR with learned
    non-Gaussian noise (LEAP-VAR). ``kind="linear", history_scale=True`` keeps the linear
    mean and lets the noise scale follow the history: the network ``"transition"`` has one
    output per variable, the log-scale ``s_i`` of its masked window (starting at 0), and
    the skew and tail stay per-variable constants (a sparse VAR whose noise scale depends
    on the past, as in CaRiNG's ``z_t,i = w z_t-1,i-1 + 0.1 |z_t-1,i| eps``). The skew is
    bounded to ``(-2, 2)`` and the log tail weight to ``(-1, 1)`` (by ``b tanh(x / b)``),
    which keeps sampling finite.

    Parameters
    ----------
    lag_graph : array (k, L, k)
    kind : {"mlp", "linear"}
    factory : callable, optional
        Custom network, ``factory(L * k + k, 4, rngs=...) -> nnx.Module``
        (``factory(L * k + k, 1, rngs=...)`` with ``history_scale=True``).
    n_hidden, n_layers, activation
        As in :func:`transition_mean`.
    history_scale : bool
        With ``kind="linear"``: a learned log-scale of the masked window (default: a
        constant scale). ``kind="mlp"`` learns one already and refuses it.

    Examples
    --------
    >>> from numpyro import handlers
    >>> with handlers.seed(rng_seed=0):
    ...     flow_fn = flow_transition(jnp.ones((2, 1, 2)), n_hidden=8, n_layers=1)
    >>> [a.shape for a in flow_fn(jnp.ones((5, 1, 2)))]
    [(5, 2), (5, 2), (5, 2), (5, 2)]
    """
    k = lag_graph.shape[-1]
    if history_scale and kind != "linear":
        raise CausalZooError(
            "history_scale=True applies to kind='linear' (a linear mean with a "
            f"history-dependent noise scale); kind={kind!r} learns a history-dependent "
            "log-scale already: leave history_scale False."
        )
    n_outputs = 1 if history_scale else 0 if kind == "linear" else FLOW_OUTPUTS
    linear, residual = _mechanism(lag_graph, n_outputs, factory=factory, n_hidden=n_hidden,
                                  n_layers=n_layers, activation=activation)
    skew = numpyro.param("flow_skew", jnp.zeros(k))
    log_tail = numpyro.param("flow_log_tail", jnp.zeros(k))

    def bounded(raw, bound):
        return bound * jnp.tanh(raw / bound)

    def flow_fn(window):
        loc = linear(window)
        if residual is None or n_outputs == 1:
            zero = jnp.zeros_like(loc)
            log_scale = zero if residual is None else residual(window)[..., 0]
            return FlowParams(loc, log_scale, bounded(skew + zero, _SKEW_BOUND),
                              bounded(log_tail + zero, _TAIL_BOUND))
        out = residual(window)
        return FlowParams(loc + out[..., 0], out[..., 1],
                          bounded(skew + out[..., 2], _SKEW_BOUND),
                          bounded(log_tail + out[..., 3], _TAIL_BOUND))

    return flow_fn
