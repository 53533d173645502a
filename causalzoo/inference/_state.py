"""The SVI state as plain arrays (checkpoints) and the learning-rate back-off scale.

Private helpers of :mod:`causalzoo.inference.svi`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._errors import CausalZooError

# ---------------------------------------------------------------- learning-rate back-off


class _StepScale(NamedTuple):
    """Multiplies the optimiser's updates; halved by each learning-rate back-off."""

    scale: jax.Array


def _with_step_scale(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    # Always present (x * 1.0 is exact, so results do not change) so that a checkpoint of a
    # fit that stopped can be resumed with on_nonfinite="backoff" and vice versa.
    def init(params):
        del params
        return _StepScale(jnp.ones((), jnp.float32))

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.chain(optimizer, optax.GradientTransformation(init, update))


def _scale_steps(state, factor: float):
    def f(node):
        return _StepScale(node.scale * factor) if isinstance(node, _StepScale) else node

    return jax.tree.map(f, state, is_leaf=lambda node: isinstance(node, _StepScale))


# ---------------------------------------------------------------- state <-> plain arrays


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _state_arrays(state) -> tuple[dict[str, np.ndarray], list]:
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    arrays, described = {}, []
    for i, (path, leaf) in enumerate(leaves):
        value = jax.random.key_data(leaf) if _is_key(leaf) else leaf
        arrays[f"s{i}"] = np.asarray(jax.device_get(value))
        described.append([jax.tree_util.keystr(path), list(arrays[f"s{i}"].shape),
                          str(arrays[f"s{i}"].dtype)])
    return arrays, described


def _restore_state(template, arrays: Mapping[str, np.ndarray], where: str):
    """Put saved leaves into the structure of a freshly initialised state, checking that
    every leaf has the path, shape and dtype it has now (same model, guide and optimiser)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    n_saved = sum(1 for k in arrays if k.startswith("s") and k[1:].isdigit())
    if n_saved != len(flat):
        raise CausalZooError(
            f"The checkpoint in {where!r} holds {n_saved} state arrays but this fit has "
            f"{len(flat)}: it was written by a different model, guide or optimiser. Resume "
            "with the same set-up, or pass another checkpoint_dir to start afresh."
        )
    leaves = []
    for i, (path, leaf) in enumerate(flat):
        saved = arrays[f"s{i}"]
        now = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
        if saved.shape != now.shape or saved.dtype != now.dtype:
            raise CausalZooError(
                f"The checkpoint in {where!r} does not fit this model: state "
                f"{jax.tree_util.keystr(path)} is {saved.dtype}{list(saved.shape)} there and "
                f"{now.dtype}{list(now.shape)} here (different sizes or data). Resume with "
                "the same model configuration and data, or pass another checkpoint_dir."
            )
        if _is_key(leaf):
            leaves.append(jax.random.wrap_key_data(jnp.asarray(saved),
                                                   impl=jax.random.key_impl(leaf)))
        else:
            # .at[...].set keeps the template's dtype and weak type: the compiled call sees
            # exactly the types of an uninterrupted fit.
            leaves.append(leaf.at[...].set(jnp.asarray(saved)))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _check_fingerprint(saved: Mapping[str, Any], now: Mapping[str, Any], where: str) -> None:
    differ = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now"
                          for k in differ)
        raise CausalZooError(
            f"The checkpoint in {where!r} belongs to another fit ({shown}). Resume with the "
            "same data, batch_size, seed, steps_per_call and learning rates, or pass another "
            "checkpoint_dir to start afresh."
        )
