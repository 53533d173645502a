"""The SVI engine: any (model, guide) pair, fixed-shape minibatches, many steps per call.

Design, in the words of ``DESIGN.md``'s performance rules:

* the data are put on the device once; each step gathers its minibatch there by index;
* every minibatch has the same shape (``batch_size``; the remainder of an epoch is left for
  the next permutation, never a short batch), so one compiled function serves the whole fit;
* ``steps_per_call`` SVI steps run inside one compiled ``jax.lax.scan``; the last call of a
  fit that is not a whole number of calls runs the same compiled function with the surplus
  steps switched off (``lax.cond``), so nothing recompiles;
* the host sees the device once per call: to update the progress bar, record the losses and
  check for a plateau or a non-finite loss;
* on CPU the compiled call leaves reductions to XLA's own fusion rather than YNNPACK's, so
  the cell x gene terms of the likelihood fuse into the ELBO's sums (see
  ``_CPU_COMPILER_OPTIONS``).

Reliability (``docs/guides/reliability.md``):

* the same seed gives bit-identical results on CPU: call ``c`` draws its minibatches and ELBO
  noise from ``fold_in(key, c)``, so the randomness of a call depends only on the seed and the
  call's index, never on what ran before in the process;
* with ``checkpoint_dir`` the SVI state (parameters, optimiser state, RNG key), the step, the
  loss history and the early-stopping and back-off bookkeeping are written atomically every
  ``checkpoint_every`` steps (:mod:`causalzoo.inference.checkpoint`), and ``resume=True``
  continues from them to the same parameters as an uninterrupted fit;
* ``KeyboardInterrupt`` (Ctrl-C) writes a checkpoint and returns the parameters reached;
* a non-finite loss, or a non-finite parameter at the end of a call, stops the fit with the
  parameters of the last step whose loss was finite and a diagnosis (the step, and which
  sample site's log-density or which parameter's gradient went non-finite), found by
  re-running that step outside the compiled loop; ``on_nonfinite="backoff"`` halves the
  learning rate from there instead of stopping.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec
from numpyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

from .._errors import CausalZooError, check_bool, check_int
from . import checkpoint as _ckpt
from ._recovery import _params_finite, _recover, _replay
from ._state import (
    _check_fingerprint,
    _restore_state,
    _scale_steps,
    _state_arrays,
    _with_step_scale,
)
from .sharding import Devices, cell_mesh, check_divisible, constrain_batch, replicate

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
    diagnosis : str or None
        Why the fit stopped on a non-finite loss or parameter (``stop_reason ==
        "non_finite"``), or what the learning-rate back-offs were; ``None`` otherwise.
    resumed_from : int
        Steps restored from a checkpoint (0 for a fresh fit). ``losses`` and ``n_steps``
        always cover the whole fit, restored steps included.
    checkpoint : pathlib.Path or None
        The checkpoint directory, when one was used.
    """

    params: dict[str, Any]
    losses: np.ndarray
    n_steps: int
    stop_reason: str
    compile_seconds: float
    run_seconds: float
    state: Any = field(default=None, repr=False)
    diagnosis: str | None = None
    resumed_from: int = 0
    checkpoint: Path | None = None

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


# XLA:CPU in jaxlib 0.12 hands reductions to YNNPACK "library fusions", which take no
# transcendental elementwise ops: every cell x gene intermediate that feeds one of the ELBO's
# sums (log, exp, divisions of the NB log-density and its derivative) is then written to
# memory by a loop of its own and read back, instead of being fused into the reduction. On
# the NB VAE of benchmarks/bench_peers.py that doubled the time of an SVI step
# (docs/performance.md). The engine's compiled call therefore asks XLA to keep YNNPACK for
# matrix products only. It is a per-``jit`` compiler option (no global JAX or XLA setting is
# touched), passed only on CPU and only when the installed jaxlib accepts it.
_CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


@cache
def _cpu_options_accepted() -> bool:
    """Whether this jaxlib's CPU compiler knows ``_CPU_COMPILER_OPTIONS`` (an experimental
    flag: it may be renamed or dropped in another version, and then nothing is passed)."""
    try:
        probe = jax.jit(lambda v: v + 1, compiler_options=_CPU_COMPILER_OPTIONS)
        probe.lower(jax.ShapeDtypeStruct((1,), jnp.float32)).compile()
    except (jax.errors.JaxRuntimeError, ValueError, TypeError):
        return False
    return True


def _compiler_options(mesh) -> dict[str, str] | None:
    """Compiler options of the engine's compiled call on the devices it will run on."""
    platform = (mesh.devices.flat[0].platform if mesh is not None
                else jax.default_backend())
    if platform != "cpu" or jax.default_backend() != "cpu" or not _cpu_options_accepted():
        return None
    return dict(_CPU_COMPILER_OPTIONS)


def _validate(data, batch_size, max_steps, learning_rate, check_learning_rate=True):
    if not data:
        raise CausalZooError("fit_svi needs at least one data array.")
    sizes = {name: np.shape(v)[0] if np.ndim(v) else None for name, v in data.items()}
    n_cells = next(iter(sizes.values()))
    bad = {k: v for k, v in sizes.items() if v != n_cells}
    if bad:
        raise CausalZooError(
            f"All data arrays must share their first (cell) axis; sizes were {sizes}."
        )
    check_int("batch_size", batch_size)
    if batch_size > n_cells:
        raise CausalZooError(
            f"batch_size={batch_size} is larger than the {n_cells} cells: pass "
            f"batch_size<={n_cells} (or leave it unset to use min(256, n_cells))."
        )
    check_int("max_steps", max_steps)
    if check_learning_rate and not (
        isinstance(learning_rate, (int, float, np.integer, np.floating))
        and not isinstance(learning_rate, bool)
        and 0 < learning_rate < np.inf
    ):
        raise CausalZooError(
            f"learning_rate must be a finite number > 0 (e.g. 1e-3); got {learning_rate!r}."
        )
    return n_cells


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


# ---------------------------------------------------------------- the engine

_BACKOFF_FACTOR = 0.5
_MAX_BACKOFFS = 8
_ON_NONFINITE = ("stop", "backoff")


def _validate_reliability(checkpoint_dir, checkpoint_every, resume, on_nonfinite,
                          checkpoint_meta):
    check_int("checkpoint_every", checkpoint_every, meaning="a number of steps")
    check_bool("resume", resume)
    if resume and checkpoint_dir is None:
        raise CausalZooError(
            "resume=True needs checkpoint_dir=<the directory of the interrupted fit>."
        )
    if on_nonfinite not in _ON_NONFINITE:
        raise CausalZooError(
            f"on_nonfinite={on_nonfinite!r}: use 'stop' (keep the last good parameters and "
            "stop) or 'backoff' (halve the learning rate and continue from them)."
        )
    try:
        json.dumps(checkpoint_meta)
    except (TypeError, ValueError):
        raise CausalZooError(
            f"checkpoint_meta={checkpoint_meta!r} is not JSON-serialisable; pass plain "
            "numbers, strings, lists and dicts."
        ) from None


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
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    on_nonfinite: str = "stop",
    checkpoint_meta: Mapping[str, Any] | None = None,
    devices: Devices = None,
) -> FitResult:
    """Fit ``guide`` to ``model`` by stochastic variational inference on minibatches.

    Parameters
    ----------
    model, guide : callable
        NumPyro model and guide. Each step calls them with the minibatch as keyword
        arguments, plus ``n_cells`` (the number of cells, for scaling) and ``static_kwargs``.
    data : mapping of str to array, or CellSource
        Arrays whose first axis is the cell axis; they are put on the device once. Or a
        :class:`causalzoo.data.streaming.CellSource` (e.g. from a backed AnnData) that
        streams chunks of cells from disk: each compiled call then draws its
        ``steps_per_call`` minibatches from one chunk, read (and put on the device) in a
        background thread while the previous call runs.
    batch_size : int
        Cells per step; must not exceed the number of cells.
    max_steps : int
        Number of SVI steps (of the whole fit, counting steps restored from a checkpoint).
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
        SVI steps per compiled call; defaults to about one epoch, between 50 and 500 (one
        pass over a chunk when streaming; on resume: the checkpoint's).
    early_stopping : EarlyStopping or bool
        ``True`` uses :class:`EarlyStopping` defaults.
    progress : bool
        Show a progress bar with the ELBO per cell.
    init_params : mapping, optional
        Initial parameter values (e.g. to continue a fit).
    description : str
        Progress bar label.
    checkpoint_dir : str or Path, optional
        Write checkpoints here (:mod:`causalzoo.inference.checkpoint`): every
        ``checkpoint_every`` steps, at the end, on Ctrl-C and on a non-finite stop. A
        directory that already holds a checkpoint needs ``resume=True``.
    checkpoint_every : int
        Steps between checkpoints, rounded up to whole compiled calls.
    resume : bool
        Continue the fit checkpointed in ``checkpoint_dir`` (start afresh when it holds none).
        With the same data, arguments and seed the result is bit-identical on CPU to an
        uninterrupted fit; a checkpoint of another fit is refused with the differences.
    on_nonfinite : {"stop", "backoff"}
        On a non-finite loss or parameter: stop with the last good parameters, or restart
        from them with half the learning rate (at most 8 times, then stop).
    checkpoint_meta : mapping, optional
        JSON-serialisable settings that a checkpoint must match to be resumed (a user class
        passes its learning rates and configuration here; ``optimizer`` cannot be compared).
    devices : int, sequence of jax devices or jax.sharding.Mesh, optional
        Split the cell axis of every minibatch over these devices, with the parameters,
        optimiser state and data replicated (:mod:`causalzoo.inference.sharding`).
        ``batch_size`` must be a multiple of their number. The minibatches and ELBO noise are
        those of a one-device fit with the same seed, so the losses agree with it up to the
        order of floating-point sums (not bit for bit). A checkpoint may be resumed on
        another number of devices.

    Returns
    -------
    FitResult

    Examples
    --------
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> def model(y, n_cells=None):
    ...     mu = numpyro.sample("mu", dist.Normal(0, 10))
    ...     scale = n_cells / y.shape[0]
    ...     with numpyro.plate("cells", y.shape[0]), numpyro.handlers.scale(scale=scale):
    ...         numpyro.sample("y", dist.Normal(mu, 1), obs=y)
    >>> def guide(y, n_cells=None):
    ...     numpyro.sample("mu", dist.Delta(numpyro.param("m", 0.0)))
    >>> res = fit_svi(model, guide, {"y": jnp.full(100, 3.0)}, batch_size=10,
    ...               max_steps=300, learning_rate=0.1, progress=False)
    >>> round(float(res.params["m"]), 1)
    3.0
    """
    from ..data.streaming import CellSource  # the data layer never imports the engine

    source = data if isinstance(data, CellSource) else None
    if source is not None:
        # Each call's minibatches come from one chunk of ``rows`` cells.
        n_cells, rows = source.n_cells, source.chunk_cells
        if _is_int(batch_size) and batch_size > rows:
            raise CausalZooError(
                f"batch_size={batch_size} is larger than the streamed chunks of {rows} cells: "
                f"pass batch_size<={rows}, or a source with chunk_cells>={batch_size}."
            )
        _validate({"chunk": np.empty((rows, 0), np.float32)}, batch_size, max_steps,
                  learning_rate, check_learning_rate=optimizer is None)
    else:
        n_cells = rows = _validate(data, batch_size, max_steps, learning_rate,
                                   check_learning_rate=optimizer is None)
    mesh = cell_mesh(devices)
    check_divisible(batch_size, mesh)
    _validate_reliability(checkpoint_dir, checkpoint_every, resume, on_nonfinite,
                          checkpoint_meta)
    key = as_key(seed)
    where = str(checkpoint_dir)
    saved = _ckpt.read_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if saved is not None and not resume:
        raise CausalZooError(
            f"checkpoint_dir={where!r} already holds a checkpoint (step {saved[0].get('step')}). "
            "Pass resume=True to continue that fit, or another (empty) directory to start a "
            "new one; delete the directory to discard it."
        )
    steps_per_epoch = rows // batch_size
    if steps_per_call is None:
        default = steps_per_epoch if source is not None else max(50, min(steps_per_epoch, 500))
        steps_per_call = (int(saved[0]["fit"]["steps_per_call"]) if saved else
                          min(max_steps, default))
    check_int("steps_per_call", steps_per_call)
    if not saved:
        steps_per_call = int(min(steps_per_call, max_steps))
    steps_per_call = int(steps_per_call)
    if early_stopping is True:
        early_stopping = EarlyStopping()
    if source is None:
        device_data = replicate(jax.device_put({k: jnp.asarray(v) for k, v in data.items()}),
                                mesh)
        described = {k: [list(v.shape), str(v.dtype)] for k, v in device_data.items()}
    else:
        device_data, described = None, source.describe()
    fingerprint = {
        "n_cells": int(n_cells),
        "batch_size": int(batch_size),
        "steps_per_call": steps_per_call,
        "seed": np.asarray(jax.random.key_data(key)).tolist(),
        "data": described,
        "learning_rate": None if optimizer else float(learning_rate),
        "description": description,
        "checkpoint_meta": json.loads(json.dumps(checkpoint_meta)),
    }
    if saved:
        _check_fingerprint(saved[0]["fit"], fingerprint, where)

    optimizer = _with_step_scale(optimizer or optax.adam(learning_rate))
    loss = loss or Trace_ELBO()
    batch_fn = batch_fn or _default_batch
    static = dict(static_kwargs or {})
    svi = SVI(model, guide, optimizer, loss, n_cells=n_cells, **static)

    key_init, key_run = jax.random.split(key)
    feed = None
    if source is not None:
        # Chunk c of the stream is a function of the seed and c only (resume-safe).
        stream_seed = np.asarray(jax.random.key_data(jax.random.fold_in(key, 0x5EED)))
        feed = source.feed([int(w) for w in stream_seed.ravel()],
                           put=lambda chunk: replicate(jax.device_put(chunk), mesh))
    try:
        first_data = (device_data if feed is None else
                      feed.get(int(saved[0]["calls"]) if saved else 0, more=False))
        first = batch_fn(key_init, jnp.arange(batch_size), first_data)
        del first_data
        # Compiled, initialisation takes a few seconds instead of running the model and guide
        # op by op (7-15 s cold on 2 cores, benchmarks/README.md).
        state = replicate(jax.jit(partial(svi.init, **first))(
            key_init, init_params=dict(init_params) if init_params else None
        ), mesh)
    except BaseException:
        if feed is not None:
            feed.close()
        raise
    # Permutations per call: enough epochs to cover steps_per_call batches.
    n_perms = math.ceil(steps_per_call / steps_per_epoch)

    def plan(call_key):
        """Minibatch indices and per-step keys of one call: a function of its key only."""
        perm_keys = jax.random.split(call_key, n_perms + 1)
        perms = jax.vmap(lambda k: jax.random.permutation(k, rows))(perm_keys[1:])
        idx = perms[:, : steps_per_epoch * batch_size].reshape(-1, batch_size)[:steps_per_call]
        return idx, jax.random.split(perm_keys[0], steps_per_call)

    # The data are an argument, not a closure: a closed-over array would be baked into the
    # compiled program as a constant (slow to compile, and a second copy in memory).
    def run_call(state, call_key, n_active, device_data):
        idx, step_keys = plan(call_key)

        def body(state, inputs):
            i, idx_i, key_i = inputs

            def step(state):
                batch = constrain_batch(batch_fn(key_i, idx_i, device_data), mesh, batch_size)
                return svi.update(state, **batch)

            def skip(state):
                return state, jnp.asarray(jnp.nan, dtype=jnp.float32)

            new_state, value = lax.cond(i < n_active, step, skip, state)
            return new_state, value.astype(jnp.float32)

        state, values = lax.scan(body, state, (jnp.arange(steps_per_call), idx, step_keys))
        return state, values, _params_finite(svi, state)

    # With a mesh the state stays replicated: the compiler all-reduces the gradients of the
    # cell-sharded minibatch.
    run_call = jax.jit(run_call, out_shardings=None if mesh is None else
                       NamedSharding(mesh, PartitionSpec()),
                       compiler_options=_compiler_options(mesh))

    losses: list[np.ndarray] = []
    done, call, backoffs = 0, 0, 0
    best, best_step = np.inf, 0
    stop_reason = "max_steps"
    finished = False
    diagnosis: str | None = None
    if saved:
        meta, arrays = saved
        state = replicate(_restore_state(state, arrays, where), mesh)
        losses = [np.asarray(arrays["losses"], np.float32)]
        done, call = int(meta["step"]), int(meta["calls"])
        backoffs = int(meta.get("backoffs", 0))
        best = np.inf if meta.get("best") is None else float(meta["best"])
        best_step = int(meta.get("best_step", 0))
        diagnosis = meta.get("diagnosis")
        finished = meta.get("stop_reason") == "plateau"
        stop_reason = "plateau" if finished else "max_steps"
    resumed_from = done
    checkpointed = done

    def write_checkpoint(reason: str) -> None:
        nonlocal checkpointed
        state_arrays, described = _state_arrays(state)
        state_arrays["losses"] = (np.concatenate(losses) if losses
                                  else np.zeros(0, np.float32))
        _ckpt.write_checkpoint(checkpoint_dir, {
            "step": done, "calls": call, "stop_reason": reason, "max_steps": int(max_steps),
            "best": None if not np.isfinite(best) else float(best), "best_step": best_step,
            "backoffs": backoffs, "diagnosis": diagnosis, "fit": fingerprint,
            "state": described,
        }, state_arrays)
        checkpointed = done

    start = time.perf_counter()
    compile_seconds = float("nan")
    bar = tqdm(total=max_steps, initial=min(done, max_steps), desc=description, unit="step",
               disable=not progress, dynamic_ncols=True, leave=True)
    # The start state, key and first step of the call in flight and of the one before: a
    # non-finite step is replayed from them (the state is only seen between calls).
    segments: list[tuple[int, Any, jax.Array, Any]] = []
    try:
        while done < max_steps and not finished:
            n_active = min(steps_per_call, max_steps - done)
            call_key = jax.random.fold_in(key_run, call)
            call_data = (device_data if feed is None else
                         feed.get(call, more=done + n_active < max_steps))
            segments = [*segments[-1:], (done, state, call_key, call_data)]
            new_state, call_losses, ok = run_call(state, call_key, jnp.int32(n_active),
                                                  call_data)
            del call_data
            call_losses = np.asarray(jax.device_get(call_losses))[:n_active]
            ok = bool(ok)
            if np.isnan(compile_seconds):
                compile_seconds = time.perf_counter() - start
            if ok and np.all(np.isfinite(call_losses)):
                # One statement without calls: a Ctrl-C cannot land between these updates,
                # so a checkpoint written on interrupt is always consistent.
                state, losses, done, call = (
                    new_state, [*losses, call_losses], done + n_active, call + 1
                )
            else:
                kept, diagnosis, can_back_off = _recover(
                    svi, run_call, plan, batch_fn, segments, call_losses, new_state, n_active,
                )
                kept_state = _replay(run_call, segments, kept)
                kept_losses = [np.concatenate([*losses, call_losses])[:kept]]
                state, losses, done, call = kept_state, kept_losses, kept, call + 1
                bar.n = done
                if on_nonfinite == "backoff" and backoffs < _MAX_BACKOFFS and can_back_off:
                    backoffs += 1
                    state = replicate(_scale_steps(state, _BACKOFF_FACTOR), mesh)
                    segments = []
                    diagnosis = (f"{diagnosis} Restarted from step {done} with the learning "
                                 f"rate scaled by {_BACKOFF_FACTOR ** backoffs:g} (back-off "
                                 f"{backoffs} of {_MAX_BACKOFFS}).")
                    warnings.warn(f"{description}: {diagnosis}", RuntimeWarning, stacklevel=2)
                    continue
                stop_reason = "non_finite"
                diagnosis = (f"{diagnosis} The fit stopped and kept the parameters after step "
                             f"{done}, the last whose loss was finite. Try a smaller "
                             "learning_rate or on_nonfinite='backoff', and check the data "
                             "for extreme values.")
                warnings.warn(f"{description}: {diagnosis}", RuntimeWarning, stacklevel=2)
                break
            mean_loss = float(call_losses.mean())
            bar.update(n_active)
            bar.set_postfix({"elbo/cell": f"{-mean_loss / n_cells:.4g}"}, refresh=False)
            if early_stopping:
                if not np.isfinite(best) or mean_loss < best - early_stopping.min_delta * abs(best):
                    best, best_step = mean_loss, done
                elif (done >= early_stopping.min_steps
                      and done - best_step >= early_stopping.patience):
                    stop_reason = "plateau"
                    break
            if checkpoint_dir is not None and done - checkpointed >= checkpoint_every:
                write_checkpoint("running")
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        saved_note = ""
        if checkpoint_dir is not None:
            write_checkpoint(stop_reason)
            saved_note = (f" A checkpoint is in {where!r}: fit again with resume=True to "
                          "continue.")
        warnings.warn(
            f"{description}: interrupted after {done} steps; returning the parameters "
            f"reached.{saved_note}",
            RuntimeWarning,
            stacklevel=2,
        )
    else:
        if checkpoint_dir is not None:
            write_checkpoint(stop_reason)
    finally:
        bar.close()
        if feed is not None:
            feed.close()
        segments = []
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
        diagnosis=diagnosis,
        resumed_from=resumed_from,
        checkpoint=None if checkpoint_dir is None else Path(checkpoint_dir),
    )
