"""The SVI engine: any (model, guide) pair, fixed-shape minibatches, many steps per call.

Design, in the words of ``DESIGN.md``'s performance rules:

* the data are put on the device once; each step gathers its minibatch there by index;
* every minibatch has the same shape (``batch_size``; the remainder of an epoch is left for
  the next permutation, never a short batch), so one compiled function serves the whole fit;
* ``steps_per_call`` SVI steps run inside one compiled ``jax.lax.scan``; the last call of a
  fit that is not a whole number of calls runs the same compiled function with the surplus
  steps switched off (``lax.cond``), so nothing recompiles;
* the host sees the device once per call: to update the progress bar, record the losses and
  check for a plateau or a non-finite loss.

The same seed gives the same result on CPU. ``KeyboardInterrupt`` stops the fit and returns
the parameters reached so far; a non-finite loss stops it and returns the last finite state.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from numpyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

from .._errors import CausalZooError

__all__ = ["EarlyStopping", "FitResult", "fit_svi", "as_key", "two_speed_adam"]

BatchFn = Callable[[jax.Array, jax.Array, Mapping[str, jax.Array]], dict[str, Any]]


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the loss has not improved for a while.

    The monitored value is the mean loss of each compiled call (``steps_per_call`` steps).
    The fit stops when the best such value has not improved by more than
    ``min_delta * |best|`` for ``patience`` steps.

    Parameters
    ----------
    patience : int
        Steps without improvement before stopping.
    min_delta : float
        Relative improvement that counts.
    min_steps : int
        Never stop before this many steps.
    """

    patience: int = 1000
    min_delta: float = 1e-4
    min_steps: int = 1000

    def __post_init__(self):
        if self.patience < 1 or self.min_delta < 0 or self.min_steps < 0:
            raise CausalZooError(
                "EarlyStopping needs patience >= 1, min_delta >= 0 and min_steps >= 0; got "
                f"{self}."
            )


@dataclass
class FitResult:
    """What a fit returns.

    Attributes
    ----------
    params : dict
        Fitted parameters, as NumPy arrays on the host (constrained values).
    losses : numpy.ndarray
        The loss (negative ELBO estimate, plus any extra terms) at every step taken.
    n_steps : int
        Steps taken.
    stop_reason : str
        ``"max_steps"``, ``"plateau"``, ``"interrupted"`` or ``"non_finite"``.
    compile_seconds, run_seconds : float
        Time to the end of the first compiled call (compilation included) and in total.
    state : Any
        The final optimiser state (for continuing a fit).
    """

    params: dict[str, Any]
    losses: np.ndarray
    n_steps: int
    stop_reason: str
    compile_seconds: float
    run_seconds: float
    state: Any = field(default=None, repr=False)

    @property
    def elbo(self) -> np.ndarray:
        """The ELBO history, ``-losses``."""
        return -self.losses


def as_key(seed: int | jax.Array) -> jax.Array:
    """A typed ``jax.random.key`` from an int seed, or a key passed through."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return jax.random.key(int(seed))
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed
    if isinstance(seed, jax.Array) and seed.dtype == jnp.uint32 and seed.shape == (2,):
        return jax.random.wrap_key_data(seed)  # a legacy jax.random.PRNGKey
    raise CausalZooError(f"seed must be an int or a jax.random.key; got {seed!r}.")


def two_speed_adam(
    learning_rate: float, global_learning_rate: float, *, network_marker: str = "$params"
) -> optax.GradientTransformation:
    """Adam with one rate for network weights and another for everything else.

    Amortised networks train well at ``~1e-3``; the global variational parameters of the
    zoo models (mask logits, effect means, SCM weights) get one gradient signal per step and
    move ``~learning_rate`` per step under Adam, so they need a larger rate to converge in the
    same number of steps. Parameters whose name contains ``network_marker`` (NNX modules
    attached with ``nnx_module`` are named ``"<name>$params"``) or starts with ``log_``
    (gene-wise dispersions and scales) use ``learning_rate``.

    Examples
    --------
    >>> opt = two_speed_adam(1e-3, 1e-2)
    """

    def labels(params):
        return {
            name: "network" if network_marker in name or name.startswith("log_") else "global"
            for name in params
        }

    return optax.multi_transform(
        {"network": optax.adam(learning_rate), "global": optax.adam(global_learning_rate)},
        labels,
    )


def _default_batch(key, idx, data):
    return {name: value[idx] for name, value in data.items()}


def _validate(data, batch_size, max_steps, learning_rate):
    if not data:
        raise CausalZooError("fit_svi needs at least one data array.")
    sizes = {name: np.shape(v)[0] if np.ndim(v) else None for name, v in data.items()}
    n_cells = next(iter(sizes.values()))
    bad = {k: v for k, v in sizes.items() if v != n_cells}
    if bad:
        raise CausalZooError(
            f"All data arrays must share their first (cell) axis; sizes were {sizes}."
        )
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise CausalZooError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if batch_size > n_cells:
        raise CausalZooError(
            f"batch_size={batch_size} is larger than the {n_cells} cells: pass "
            f"batch_size<={n_cells} (or leave it unset to use min(256, n_cells))."
        )
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise CausalZooError(f"max_steps must be a positive integer; got {max_steps!r}.")
    if learning_rate is not None and not learning_rate > 0:
        raise CausalZooError(f"learning_rate must be > 0; got {learning_rate!r}.")
    return n_cells


def fit_svi(
    model: Callable,
    guide: Callable,
    data: Mapping[str, Any],
    *,
    batch_size: int,
    max_steps: int,
    seed: int | jax.Array = 0,
    learning_rate: float = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    loss=None,
    static_kwargs: Mapping[str, Any] | None = None,
    batch_fn: BatchFn | None = None,
    steps_per_call: int | None = None,
    early_stopping: EarlyStopping | bool = False,
    progress: bool = True,
    init_params: Mapping[str, Any] | None = None,
    description: str = "SVI",
) -> FitResult:
    """Fit ``guide`` to ``model`` by stochastic variational inference on minibatches.

    Parameters
    ----------
    model, guide : callable
        NumPyro model and guide. Each step calls them with the minibatch as keyword
        arguments, plus ``n_cells`` (the number of cells, for scaling) and ``static_kwargs``.
    data : mapping of str to array
        Arrays whose first axis is the cell axis; they are put on the device once.
    batch_size : int
        Cells per step; must not exceed the number of cells.
    max_steps : int
        Number of SVI steps.
    seed : int or jax.random.key
        Seed of initialisation, minibatch order and ELBO noise.
    learning_rate : float
        Adam's learning rate when ``optimizer`` is None.
    optimizer : optax.GradientTransformation, optional
        Any optax optimiser.
    loss : numpyro ELBO, optional
        Defaults to :class:`numpyro.infer.Trace_ELBO`.
    static_kwargs : mapping, optional
        Keyword arguments fixed for the whole fit (configuration, sizes).
    batch_fn : callable, optional
        ``batch_fn(key, idx, data) -> kwargs`` builds a step's model arguments from the cell
        indices ``idx`` (on device, traced); the default gathers every data array.
    steps_per_call : int, optional
        SVI steps per compiled call; defaults to about one epoch, between 50 and 500.
    early_stopping : EarlyStopping or bool
        ``True`` uses :class:`EarlyStopping` defaults.
    progress : bool
        Show a progress bar with the ELBO per cell.
    init_params : mapping, optional
        Initial parameter values (e.g. to continue a fit).
    description : str
        Progress bar label.

    Returns
    -------
    FitResult

    Examples
    --------
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> def model(y, n_cells=None):
    ...     mu = numpyro.sample("mu", dist.Normal(0, 10))
    ...     with numpyro.plate("cells", y.shape[0]), numpyro.handlers.scale(scale=n_cells / y.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 1), obs=y)
    >>> def guide(y, n_cells=None):
    ...     numpyro.sample("mu", dist.Delta(numpyro.param("m", 0.0)))
    >>> res = fit_svi(model, guide, {"y": jnp.full(100, 3.0)}, batch_size=10,
    ...               max_steps=300, learning_rate=0.1, progress=False)
    >>> round(float(res.params["m"]), 1)
    3.0
    """
    n_cells = _validate(data, batch_size, max_steps, None if optimizer else learning_rate)
    steps_per_epoch = n_cells // batch_size
    if steps_per_call is None:
        steps_per_call = min(max_steps, max(50, min(steps_per_epoch, 500)))
    if not isinstance(steps_per_call, (int, np.integer)) or steps_per_call < 1:
        raise CausalZooError(
            f"steps_per_call must be a positive integer; got {steps_per_call!r}."
        )
    steps_per_call = int(min(steps_per_call, max_steps))
    if early_stopping is True:
        early_stopping = EarlyStopping()
    optimizer = optimizer or optax.adam(learning_rate)
    loss = loss or Trace_ELBO()
    batch_fn = batch_fn or _default_batch
    static = dict(static_kwargs or {})
    svi = SVI(model, guide, optimizer, loss, n_cells=n_cells, **static)

    device_data = jax.device_put({k: jnp.asarray(v) for k, v in data.items()})
    key = as_key(seed)
    key_init, key_run = jax.random.split(key)
    first = batch_fn(key_init, jnp.arange(batch_size), device_data)
    # Compiled, initialisation takes a few seconds instead of running the model and guide op
    # by op (7-15 s cold on 2 cores, benchmarks/README.md).
    state = jax.jit(partial(svi.init, **first))(
        key_init, init_params=dict(init_params) if init_params else None
    )
    # Permutations per call: enough epochs to cover steps_per_call batches.
    n_perms = math.ceil(steps_per_call / steps_per_epoch)

    # The data are an argument, not a closure: a closed-over array would be baked into the
    # compiled program as a constant (slow to compile, and a second copy in memory).
    def run_call(state, call_key, n_active, device_data):
        perm_keys = jax.random.split(call_key, n_perms + 1)
        perms = jax.vmap(lambda k: jax.random.permutation(k, n_cells))(perm_keys[1:])
        idx = perms[:, : steps_per_epoch * batch_size].reshape(-1, batch_size)[:steps_per_call]
        step_keys = jax.random.split(perm_keys[0], steps_per_call)

        def body(state, inputs):
            i, idx_i, key_i = inputs

            def step(state):
                return svi.update(state, **batch_fn(key_i, idx_i, device_data))

            def skip(state):
                return state, jnp.asarray(jnp.nan, dtype=jnp.float32)

            new_state, value = lax.cond(i < n_active, step, skip, state)
            return new_state, value.astype(jnp.float32)

        return lax.scan(body, state, (jnp.arange(steps_per_call), idx, step_keys))

    run_call = jax.jit(run_call)
    losses: list[np.ndarray] = []
    stop_reason = "max_steps"
    best, best_step = np.inf, 0
    start = time.perf_counter()
    compile_seconds = float("nan")
    n_calls = math.ceil(max_steps / steps_per_call)
    done = 0
    bar = tqdm(total=max_steps, desc=description, unit="step", disable=not progress,
               dynamic_ncols=True, leave=True)
    try:
        for call in range(n_calls):
            n_active = min(steps_per_call, max_steps - done)
            new_state, call_losses = run_call(
                state, jax.random.fold_in(key_run, call), jnp.int32(n_active), device_data
            )
            call_losses = np.asarray(jax.device_get(call_losses))[:n_active]
            if call == 0:
                compile_seconds = time.perf_counter() - start
            if not np.all(np.isfinite(call_losses)):
                # The state is only inspected between calls: keep the one from the end of the
                # previous call, and report the losses and steps that lead to it.
                first_bad = done + int(np.argmax(~np.isfinite(call_losses))) + 1
                stop_reason = "non_finite"
                warnings.warn(
                    f"{description}: the loss became non-finite at step {first_bad}; the fit "
                    f"stopped and kept the parameters after step {done} (the last state "
                    "checked finite). Try a smaller learning_rate, or check the data for "
                    "extreme values.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            state = new_state
            losses.append(call_losses)
            done += n_active
            mean_loss = float(call_losses.mean())
            bar.update(n_active)
            bar.set_postfix({"elbo/cell": f"{-mean_loss / n_cells:.4g}"}, refresh=False)
            if early_stopping:
                if not np.isfinite(best) or mean_loss < best - early_stopping.min_delta * abs(best):
                    best, best_step = mean_loss, done
                elif done >= early_stopping.min_steps and done - best_step >= early_stopping.patience:
                    stop_reason = "plateau"
                    break
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        warnings.warn(
            f"{description}: interrupted after {done} steps; returning the parameters reached.",
            RuntimeWarning,
            stacklevel=2,
        )
    finally:
        bar.close()
    params = jax.device_get(svi.get_params(state))
    all_losses = np.concatenate(losses) if losses else np.zeros(0, np.float32)
    return FitResult(
        params=params,
        losses=all_losses,
        n_steps=done,
        stop_reason=stop_reason,
        compile_seconds=compile_seconds,
        run_seconds=time.perf_counter() - start,
        state=state,
    )
