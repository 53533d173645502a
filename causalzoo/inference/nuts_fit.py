"""``fit(..., method="nuts")``: NUTS on the user classes, with the networks held fixed.

NUTS needs the full-data log density and its gradient at every leapfrog step, so it is for
small problems, with the neural networks held at the values an SVI fit found (or at given
values) and only the low-dimensional latents sampled:

* :class:`~causalzoo.SparsePerturbationVAE`: the perturbation effects, the SCM weights ``W``
  and the coupling ``B`` (and the horseshoe shrinkages), with

  - ``latents="encoder"`` (default): the per-cell latents held at the encoder's posterior
    means, so NUTS samples ``p(effects, W, B | z_inv, z_resp, design)``, the conditional
    the SVI global factors are fitted to; the decoder and the counts then drop out (they do
    not depend on what is sampled);
  - ``latents="sample"``: ``z_inv`` and ``z_resp`` of every cell sampled too, under the fixed
    decoder (the dimension grows as cells x latents).

  Bernoulli masks are discrete and NUTS cannot move them: they are held at the SVI posterior
  mode (probability above 0.5) or at given ``masks``; the horseshoe prior is continuous and
  sampled in full.
* :class:`~causalzoo.IVAE`: the sources ``z`` of every point under the fixed prior and
  decoder networks, the exact posterior the amortised guide approximates.

The run is kept on the model as ``model.nuts_result``, a
:class:`~causalzoo.inference.NUTSResult` whose ``to_datatree()`` gives R-hat, ESS and
divergences through ``az.summary``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from numpyro import handlers

from .._errors import CausalZooError, check_int
from .nuts import NUTSResult, fit_nuts

__all__ = ["MAX_CELLS", "fit_by_method", "sparse_perturbation_nuts", "ivae_nuts"]

MAX_CELLS = 1000
"""Default cap on the cells NUTS sees (``max_cells``). NUTS evaluates the whole data set at
every leapfrog step, up to ``2**max_tree_depth - 1`` (1023) steps per draw, for
``(num_warmup + num_samples) * num_chains`` draws (2000 by default), with no minibatches;
with per-cell latents its dimension is also cells x latents, and the number of leapfrog steps
per draw grows with the dimension. Past about a thousand cells SVI is the tool."""

METHODS = ("svi", "nuts")


def fit_by_method(model, method: str, *, seed: int = 0, **options: Any):
    """The ``method`` dispatch of the user classes' ``fit``; ``"svi"`` is handled by ``fit``
    itself, so this is reached for NUTS or for a bad ``method``/option."""
    cls = type(model).__name__
    if method == "svi":
        raise CausalZooError(
            f"{sorted(options)} are not arguments of {cls}.fit with method='svi'; they are "
            "NUTS options: pass method='nuts' with them, or drop them."
        )
    if method != "nuts":
        raise CausalZooError(
            f"method={method!r} is not supported by {cls}.fit; use 'svi' (the default, any "
            "data size) or 'nuts' (small data, networks held at fitted values)."
        )
    runner = _RUNNERS.get(getattr(model, "spec_name", None))
    if runner is None:
        raise CausalZooError(
            f"method='nuts' is not available for {cls}: NUTS needs continuous latents "
            f"(this model samples discrete graphs). It is available for "
            f"{sorted(_CLASS_NAMES.values())}."
        )
    allowed = set(inspect.signature(runner).parameters) - {"model", "seed"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise CausalZooError(
            f"{unknown} are not options of {cls}.fit(method='nuts'); known: {sorted(allowed)}."
        )
    model.nuts_result = runner(model, seed=seed, **options)
    return model


def _fixed_params(model, params):
    if params is None:
        params = model.params
    if params is None:
        raise CausalZooError(
            f"NUTS holds the networks of this {type(model).__name__} fixed, and it has none yet: "
            "fit it with SVI first (model.fit(...)), then model.fit(method='nuts'), or pass the "
            "network weights with params=."
        )
    return params


def _select_cells(n: int, subsample, max_cells, seed):
    """Index of the cells NUTS uses: all of them, or a seeded subsample; checks the cap."""
    check_int("max_cells", max_cells)
    if subsample is not None:
        if (isinstance(subsample, bool) or not isinstance(subsample, (int, np.integer))
                or not 1 <= subsample <= n):
            raise CausalZooError(f"subsample must be an integer in 1..{n}; got {subsample!r}.")
        index = np.sort(np.random.default_rng(seed).choice(n, int(subsample), replace=False))
    else:
        index = np.arange(n)
    if index.size > max_cells:
        raise CausalZooError(
            f"NUTS on {index.size} cells is too much: it evaluates every cell at each "
            f"leapfrog step (up to 1023 per draw, no minibatches) and, with per-cell latents, "
            f"its dimension grows as cells x latents; the cap is max_cells={max_cells}. Pass "
            f"subsample=<n> (a random subset) or max_cells=<n> to accept the cost, or use SVI."
        )
    return index


def _check_sizes(**values):
    for name, value in values.items():
        check_int(name, value)


def sparse_perturbation_nuts(
    model,
    *,
    seed: int = 0,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    latents: str = "encoder",
    params: Mapping[str, Any] | None = None,
    masks: Any = None,
    subsample: int | None = None,
    max_cells: int = MAX_CELLS,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    progress: bool = False,
) -> NUTSResult:
    """NUTS for a :class:`~causalzoo.SparsePerturbationVAE` with its networks fixed.

    Parameters
    ----------
    model : SparsePerturbationVAE
        With data attached; fitted by SVI unless ``params`` is given.
    seed, num_warmup, num_samples, num_chains
        As in :func:`causalzoo.inference.fit_nuts`.
    latents : {"encoder", "sample"}
        Hold the per-cell latents at the encoder's means (samples the globals' conditional
        posterior) or sample them too under the fixed decoder.
    params : mapping, optional
        Network weights (and noise scales) to hold fixed; default the SVI fit's.
    masks : array (perturbations, latents_response), optional
        Bernoulli masks to hold fixed; default the SVI posterior mode.
    subsample : int, optional
        Use a seeded random subset of this many cells.
    max_cells : int
        Refuse more cells than this (see :data:`MAX_CELLS`).
    target_accept_prob, max_tree_depth, progress
        NUTS settings.

    Returns
    -------
    NUTSResult
        Posterior of ``effect``, ``shift``, ``scm_weights``, ``invariant_coupling`` (dims
        ``perturbations``, ``latents_response``, ``scm_edges``, ``latents_invariant``);
        the masks held fixed are in ``constant_data``.
    """
    from ..models.sparse_perturbation import sparse_perturbation_model

    _check_sizes(num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains)
    if latents not in ("encoder", "sample"):
        raise CausalZooError(f"latents={latents!r}: use 'encoder' or 'sample'.")
    params = _fixed_params(model, params)
    arrays = model._arrays()
    index = _select_cells(arrays["x"].shape[0], subsample, max_cells, seed)
    data = {k: np.asarray(arrays[k])[index] for k in ("x", "design", "covariates", "library_size")}
    config, reg = model.config, model.registry
    n_pert = data["design"].shape[1]
    k_inv, k_resp = config.n_latent_invariant, config.n_latent_response
    static = model._model_kwargs()

    conditioned, hide, constant = {}, [], {"design": data["design"]}
    init = {}
    if config.sparsity_block.name == "bernoulli":
        if masks is None:
            masks = np.asarray(config.sparsity_block.mask_probability(params)) > 0.5
        masks = np.asarray(masks, dtype=np.float32)
        if masks.shape != (n_pert, k_resp) or not np.isin(masks, (0.0, 1.0)).all():
            raise CausalZooError(
                f"masks must be a 0/1 array of shape (perturbations, latents_response) = "
                f"{(n_pert, k_resp)}; got shape {masks.shape}."
            )
        # discrete: held fixed and hidden (its prior is then a constant of the target)
        conditioned["mask"], constant["mask"] = masks, masks
        hide.append("mask")
    elif masks is not None:
        raise CausalZooError(
            f"masks= applies to the Bernoulli sparsity prior; this model uses "
            f"{config.sparsity_block.name!r}, whose shrinkages NUTS samples."
        )
    if "effect_loc" in params:
        init["effect"] = np.asarray(params["effect_loc"])
    for site in ("scm_weights", "invariant_coupling"):
        if f"{site}_map" in params:
            init[site] = np.asarray(params[f"{site}_map"])
    if latents == "encoder":
        encode = model._compiled("encode", model._build_encoder)
        z_inv, _, z_resp, _ = encode(params, data["x"], data["design"])
        conditioned["z_inv"], conditioned["z_resp"] = np.asarray(z_inv), np.asarray(z_resp)
        constant["z_inv"], constant["z_resp"] = conditioned["z_inv"], conditioned["z_resp"]
        # z_inv's prior and the counts do not depend on what NUTS samples: constants
        hide += ["z_inv", "x"]

    fixed = handlers.substitute(sparse_perturbation_model, data=dict(params))
    nuts_model = handlers.block(handlers.condition(fixed, data=conditioned), hide=hide)
    rows, cols = np.tril_indices(k_resp, -1)
    cell_names = [str(c) for c in np.asarray(model.adata.obs_names)[index]]
    dims = {
        "effect": ["perturbations", "latents_response"],
        "mask": ["perturbations", "latents_response"],
        "local_shrinkage": ["perturbations", "latents_response"],
        "scm_weights": ["scm_edges"],
        "invariant_coupling": ["latents_response", "latents_invariant"],
        "z_inv": ["cells", "latents_invariant"],
        "z_resp": ["cells", "latents_response"],
        "x": ["cells", "genes"],
        "design": ["cells", "perturbations"],
    }
    coords = {
        "perturbations": [str(p) for p in reg.perturbation_vocabulary],
        "latents_response": [f"z_resp_{k}" for k in range(k_resp)],
        "latents_invariant": [f"z_inv_{k}" for k in range(k_inv)],
        "scm_edges": [f"z_resp_{c}->z_resp_{r}" for r, c in zip(rows, cols, strict=True)],
        "cells": cell_names,
        "genes": [str(g) for g in reg.gene_names],
    }
    if latents == "sample":  # start the chains at the encoder's means
        encode = model._compiled("encode", model._build_encoder)
        z_inv, _, z_resp, _ = encode(params, data["x"], data["design"])
        init["z_inv"], init["z_resp"] = np.asarray(z_inv), np.asarray(z_resp)

    def derived(posterior):
        if "effect" not in posterior:
            return {}
        effect = posterior["effect"]
        if "mask" in constant:
            return {"shift": effect * _as_dataarray(constant["mask"], effect, dims["mask"])}
        return {"shift": effect}

    result = fit_nuts(
        nuts_model, data, num_warmup=num_warmup, num_samples=num_samples,
        num_chains=num_chains, seed=seed, static_kwargs=static,
        target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
        dims=dims, coords=coords, progress=progress,
        init_values=_valid_init(nuts_model, data, static, init),
    )
    result.constant_data = constant
    result.derived = derived
    result.attrs = {
        "model": model.spec_name,
        "inference_method": "nuts",
        "latents": latents,
        "masks": "fixed" if "mask" in constant else "none",
        "n_cells": int(index.size),
    }
    return result


def _as_dataarray(array, like, dims):
    import xarray as xr

    return xr.DataArray(np.asarray(array), dims=dims, coords={d: like[d] for d in dims})


def _valid_init(model: Callable, data, static, init: dict) -> dict:
    """The initial values that name latent sites of ``model`` (others are dropped)."""
    tr = handlers.trace(handlers.seed(model, 0)).get_trace(**data, **static)
    latent = {k for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}
    return {k: jax.numpy.asarray(v) for k, v in init.items() if k in latent}


def ivae_nuts(
    model,
    *,
    seed: int = 0,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    params: Mapping[str, Any] | None = None,
    subsample: int | None = None,
    max_cells: int = MAX_CELLS,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    progress: bool = False,
) -> NUTSResult:
    """NUTS for an :class:`~causalzoo.IVAE`: the sources ``z`` of every point sampled from
    ``p(z | x, u)`` under the fixed prior and decoder networks.

    Parameters are those of :func:`sparse_perturbation_nuts` (no ``latents`` or ``masks``).

    Returns
    -------
    NUTSResult
        Posterior of ``z`` (dims ``cells``, ``latents``); ``log_likelihood`` of ``x`` per
        point.
    """
    from ..models.ivae import ivae_model

    _check_sizes(num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains)
    params = _fixed_params(model, params)
    arrays = model._arrays()
    index = _select_cells(arrays["x"].shape[0], subsample, max_cells, seed)
    data = {k: np.asarray(v)[index] for k, v in arrays.items()}
    static = model._static_kwargs()
    nuts_model = handlers.substitute(ivae_model, data=dict(params))
    reg = model.registry
    loc = model._encoder()(params, data["x"], data["u"])[0]
    result = fit_nuts(
        nuts_model, data, num_warmup=num_warmup, num_samples=num_samples,
        num_chains=num_chains, seed=seed, static_kwargs=static,
        target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
        dims={"z": ["cells", "latents"], "u": ["cells", "aux"]},
        coords={
            "cells": [str(c) for c in np.asarray(model.adata.obs_names)[index]],
            "latents": [f"z_{k}" for k in range(model.config.n_latent)],
            "aux": list(reg.categories) or [f"{reg.aux_key}_{j}" for j in range(reg.n_aux)],
        },
        progress=progress,
        init_values={"z": np.asarray(loc)},
    )
    result.constant_data = {"u": data["u"]}
    result.attrs = {"model": model.spec_name, "inference_method": "nuts",
                    "n_cells": int(index.size)}
    return result


_RUNNERS: dict[str, Callable[..., NUTSResult]] = {
    "sparse_perturbation": sparse_perturbation_nuts,
    "ivae": ivae_nuts,
}
_CLASS_NAMES = {"sparse_perturbation": "SparsePerturbationVAE", "ivae": "IVAE"}
