"""Recovery from a non-finite loss or parameter: replaying steps and diagnosing them.

Private helpers of :mod:`causalzoo.inference.svi`: the compiled loop only reports *that* a
call went non-finite; these re-run the steps outside it to find the last good state and
which sample site's log-density or which parameter's gradient went wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.handlers import replay, seed, substitute, trace

# ---------------------------------------------------------------- non-finite diagnosis


def _nonfinite_count(x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.int32(0)
    return jnp.sum(~jnp.isfinite(x)).astype(jnp.int32)


def _named_counts(tree) -> dict[str, jax.Array]:
    return {jax.tree_util.keystr(path): _nonfinite_count(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _step_kwargs(svi, state, batch):
    # exactly what svi.update feeds the loss at this state
    return jax.random.split(state.rng_key)[1], {**batch, **svi.static_kwargs}


def _site_counts(svi, state, batch):
    """Per sample site: non-finite values and log-density entries, as the ELBO sees them."""
    rng_step, kwargs = _step_kwargs(svi, state, batch)
    params = svi.get_params(state)
    model_seed, guide_seed = jax.random.split(rng_step)
    guide_tr = trace(substitute(seed(svi.guide, guide_seed), data=params)).get_trace(**kwargs)
    model = substitute(replay(seed(svi.model, model_seed), guide_tr), data=params)
    model_tr = trace(model).get_trace(**kwargs)
    counts = {}
    for where, tr in (("guide", guide_tr), ("model", model_tr)):
        for name, site in tr.items():
            if site["type"] != "sample":
                continue
            try:
                log_density = site["fn"].log_prob(site["value"])
            except Exception:  # a distribution without a usable log_prob: values only
                log_density = jnp.zeros(())
            counts[f"{where}:{name}"] = (_nonfinite_count(site["value"]),
                                         _nonfinite_count(log_density),
                                         jnp.int32(np.size(log_density)))
    loss = svi.loss.loss(rng_step, params, svi.model, svi.guide, **kwargs)
    return counts, loss


def _grad_counts(svi, state, batch):
    rng_step, kwargs = _step_kwargs(svi, state, batch)
    unconstrained = svi.optim.get_params(state.optim_state)

    def loss_fn(p):
        return svi.loss.loss(rng_step, svi.constrain_fn(p), svi.model, svi.guide, **kwargs)

    return _named_counts(jax.grad(loss_fn)(unconstrained))


def _param_counts(svi, state):
    return _named_counts(svi.optim.get_params(state.optim_state))


def _bad(counts: Mapping[str, Any]) -> list[str]:
    return [f"{name} ({int(n)} value{'s' if int(n) > 1 else ''})"
            for name, n in counts.items() if int(n)]


def _diagnose_forward(svi, state, batch, step: int) -> str:
    counts, loss = jax.jit(partial(_site_counts, svi))(state, batch)
    found = []
    for site, (n_value, n_density, size) in counts.items():
        where, name = site.split(":", 1)
        if int(n_value):
            found.append(f"the {where}'s sample site {name!r} has {int(n_value)} non-finite "
                         "value(s)")
        elif int(n_density):
            found.append(f"the log-density of the {where}'s sample site {name!r} is "
                         f"non-finite ({int(n_density)} of {int(size)} entries)")
    if found:
        return f"At step {step} the loss is non-finite: " + "; ".join(found) + "."
    if np.isfinite(float(loss)):
        return (f"At step {step} the loss was non-finite in the compiled loop but is finite "
                "when the step is re-run on its own (a numerical corner case).")
    return (f"At step {step} the loss is non-finite although every sample site's value and "
            "log-density are finite: a term outside them is not (an analytic KL divergence, "
            "or an extra loss term such as the alignment penalty).")


def _diagnose_update(svi, good, bad, batch, step: int) -> str:
    params = _bad(jax.jit(partial(_param_counts, svi))(bad))
    grads = _bad(jax.jit(partial(_grad_counts, svi))(good, batch))
    text = f"The update of step {step} made these parameters non-finite: {', '.join(params)}."
    if grads:
        return text + f" The gradient was non-finite in: {', '.join(grads)}."
    return text + " Every gradient was finite: the optimiser's step overflowed."


# ---------------------------------------------------------------- replaying steps


def _replay(run_call, segments, step: int):
    """The state after ``step`` steps, re-run from the latest call start at or before it.

    ``segments`` holds ``(first step, start state, call key, call data)`` of the calls that
    can be replayed (the call data are the resident arrays, or a streamed chunk)."""
    for start, state, call_key, call_data in reversed(segments):
        if start <= step:
            if step == start:
                return state
            return run_call(state, call_key, jnp.int32(step - start), call_data)[0]
    return segments[0][1]


def _batch_at(plan, batch_fn, segments, step: int):
    """The arguments step ``step`` (0-based, counted over the fit) was given."""
    for start, _, call_key, call_data in reversed(segments):
        if start <= step:
            idx, step_keys = plan(call_key)
            return batch_fn(step_keys[step - start], idx[step - start], call_data)
    raise AssertionError("step before the replayable calls")  # pragma: no cover


def _params_finite(svi, state) -> jax.Array:
    leaves = jax.tree.leaves(svi.optim.get_params(state.optim_state))
    return jnp.all(jnp.stack([_nonfinite_count(x) == 0 for x in leaves] or [jnp.bool_(True)]))


def _recover(
    svi, run_call, plan, batch_fn, segments, call_losses, end_state, n_active
) -> tuple[int, str, bool]:
    """After a call with a non-finite loss or parameter: how many steps to keep, why, and
    whether a smaller learning rate could help (the kept state precedes the bad one).

    Losses are those of the parameters *before* each step, so a non-finite loss at step
    ``j`` condemns the state after ``j`` steps and the last good state is the one after
    ``j - 1``. A call whose losses are all finite but whose final parameters are not had its
    last update go wrong. Every state is rebuilt by re-running the compiled call from a call
    start with fewer active steps, so the kept parameters are those the fit really reached.
    """
    call_start, earliest = segments[-1][0], segments[0][0]
    bad = np.flatnonzero(~np.isfinite(call_losses))
    first_bad = call_start + (int(bad[0]) if bad.size else n_active)
    kept = max(first_bad - 1, earliest)
    try:
        if bad.size:
            suspect = _replay(run_call, segments, first_bad)
            if first_bad == kept or bool(jax.jit(partial(_params_finite, svi))(suspect)):
                batch = _batch_at(plan, batch_fn, segments, first_bad)
                why = _diagnose_forward(svi, suspect, batch, first_bad + 1)
                return kept, why, kept < first_bad
        else:
            suspect = end_state
        good = _replay(run_call, segments, kept)
        batch = _batch_at(plan, batch_fn, segments, kept)
        return kept, _diagnose_update(svi, good, suspect, batch, kept + 1), True
    except Exception as err:  # a failed diagnosis must never hide the stop itself
        why = (f"The loss or parameters became non-finite at step {first_bad + 1} "
               f"(diagnosis failed: {err!r}).")
        return kept, why, kept < first_bad
