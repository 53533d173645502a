"""The built-in :func:`~causalzoo.diagnostics.register_converter` hooks, one per user class.

A hook maps a fitted user class (and optionally other cells) to a
:class:`~causalzoo.diagnostics.PosteriorSource`. A new zoo entry registers its own hook next to
its user class, or here.
"""

from __future__ import annotations

import numpy as np

from .._errors import CausalZooError
from .convert import PosteriorSource, register_converter

__all__: list[str] = []


def _cells_of(fitted, adata):
    target = fitted.adata if adata is None else adata
    if target is None:
        raise CausalZooError(
            f"This {type(fitted).__name__} has no data attached (it was loaded without "
            "`adata`): pass the cells to analyse, to_datatree(model, adata), or load it with "
            "cz.load(path, adata=adata)."
        )
    return target


def sparse_perturbation_source(fitted, adata=None) -> PosteriorSource:
    """The :class:`PosteriorSource` of a fitted :class:`causalzoo.SparsePerturbationVAE`."""
    from ..models.sparse_perturbation import sparse_perturbation_guide, sparse_perturbation_model

    target = _cells_of(fitted, adata)
    arrays = fitted._arrays(target)
    reg, config = fitted.registry, fitted.config
    k_inv, k_resp = config.n_latent_invariant, config.n_latent_response
    covariate_names = [
        f"{key}={cat}" for key in reg.covariate_keys for cat in reg.covariate_categories[key]
    ]
    rows, cols = np.tril_indices(k_resp, -1)
    coords = {
        "genes": [str(g) for g in reg.gene_names],
        "perturbations": [str(p) for p in reg.perturbation_vocabulary],
        "latents_invariant": [f"z_inv_{k}" for k in range(k_inv)],
        "latents_response": [f"z_resp_{k}" for k in range(k_resp)],
        "covariate_levels": covariate_names,
        "scm_edges": [f"z_resp_{c}->z_resp_{r}" for r, c in zip(rows, cols)],
    }
    cell_data = {k: arrays[k] for k in ("x", "design", "covariates", "library_size")}

    def derived(posterior):
        out = {}
        if "mask" in posterior and "effect" in posterior:
            out["shift"] = (
                ["perturbations", "latents_response"],
                posterior["mask"] * posterior["effect"],
            )
        return out

    loss = np.asarray(fitted.history.get("loss", np.zeros(0)), dtype=np.float64)
    return PosteriorSource(
        model=sparse_perturbation_model,
        guide=sparse_perturbation_guide,
        params=fitted.params,
        cell_data=cell_data,
        static_kwargs=fitted._model_kwargs(),
        event_dims={
            "z_inv": ["latents_invariant"],
            "z_resp": ["latents_response"],
            "effect": ["latents_response"],
            "mask": ["latents_response"],
            "local_shrinkage": ["latents_response"],
            "scm_weights": ["scm_edges"],
            "invariant_coupling": ["latents_response", "latents_invariant"],
            "x": ["genes"],
        },
        coords=coords,
        cell_names=[str(c) for c in target.obs_names],
        constant_data={
            "design": (["cells", "perturbations"], arrays["design"]),
            "covariates": (["cells", "covariate_levels"], arrays["covariates"]),
            "library_size": (["cells"], arrays["library_size"]),
            "condition": (["cells"], np.asarray(arrays["condition"], dtype=str)),
        },
        # the engine's loss is the negative ELBO (plus the alignment term when it is on)
        sample_stats={"elbo": (["step"], -loss)},
        derived=derived,
        attrs={
            "model": fitted.spec_name,
            "likelihood": config.likelihood_block.name,
            "n_latent_invariant": k_inv,
            "n_latent_response": k_resp,
            "n_steps": int(fitted.fit_info.get("n_steps", loss.size)),
        },
    )


register_converter("sparse_perturbation", sparse_perturbation_source)


def ivae_source(fitted, adata=None) -> PosteriorSource:
    """The :class:`PosteriorSource` of a fitted :class:`causalzoo.IVAE` (no global latents:
    the posterior holds the per-point sources ``z``)."""
    from ..models.ivae import ivae_guide, ivae_model

    target = _cells_of(fitted, adata)
    arrays = fitted._arrays(target)
    reg, config = fitted.registry, fitted.config
    aux_names = list(reg.categories) or [f"{reg.aux_key}_{j}" for j in range(reg.n_aux)]
    loss = np.asarray(fitted.history.get("loss", np.zeros(0)), dtype=np.float64)
    return PosteriorSource(
        model=ivae_model,
        guide=ivae_guide,
        params=fitted.params,
        cell_data=dict(arrays),
        static_kwargs=fitted._static_kwargs(),
        event_dims={"z": ["latents"], "x": ["features"]},
        coords={
            "features": list(reg.feature_names),
            "latents": [f"z_{k}" for k in range(config.n_latent)],
            "aux": aux_names,
        },
        cell_names=[str(c) for c in target.obs_names],
        constant_data={"u": (["cells", "aux"], arrays["u"])},
        sample_stats={"elbo": (["step"], -loss)},
        attrs={
            "model": fitted.spec_name,
            "likelihood": config.likelihood_block.name,
            "n_latent": config.n_latent,
            "posterior": config.posterior,
            "n_steps": int(fitted.fit_info.get("n_steps", loss.size)),
        },
    )


def dynamical_source(fitted, data=None) -> PosteriorSource:
    """The :class:`PosteriorSource` of a fitted :class:`causalzoo.DynamicalCausalVAE` in
    sequence mode. ``data`` is ``None`` (the training sequences) or ``{"x": (units, steps,
    features), "u": (units,) codes}`` for other units."""
    from ..models.dynamical import dynamical_guide, dynamical_model

    mode = getattr(fitted, "mode", "sequence")
    if mode != "sequence":
        raise CausalZooError(
            f"to_datatree converts sequence-mode DynamicalCausalVAE fits only; this one is in "
            f"mode={mode!r}. Fit it on (units, steps, features) sequences to analyse it here."
        )
    if data is None:
        x, u = fitted.x, fitted.u
        if x is None:
            raise CausalZooError(
                "This DynamicalCausalVAE was loaded without its sequences: pass them, "
                "to_datatree(model, {'x': x, 'u': u})."
            )
    else:
        if not isinstance(data, dict) or "x" not in data:
            raise CausalZooError(
                f"Other units go in as a dict {{'x': (units, steps, features), 'u': codes}}; "
                f"got {type(data).__name__}."
            )
        x = fitted._check_x(data["x"])
        u = np.asarray(data.get("u", np.zeros(x.shape[0], np.int32)), np.int32)
        if x.shape[1:] != (fitted.n_steps, fitted.n_features) or u.shape != (x.shape[0],):
            raise CausalZooError(
                f"x has shape {x.shape} and u {u.shape}; the model was fitted on (units, "
                f"{fitted.n_steps}, {fitted.n_features}) with one code per unit."
            )
    config = fitted.config
    cell_data = {"x": np.asarray(x, np.float32), "u": u}
    if config.likelihood_block.uses_library:
        cell_data["library_size"] = np.maximum(cell_data["x"].sum(-1), 1.0)
    latents = [f"z_{i}" for i in range(config.n_latent)]

    def derived(posterior):
        if "target" not in posterior or "mean_shift" not in posterior:
            return {}
        return {
            "domain_shift": (["domains", "latents"], posterior["target"] * posterior["mean_shift"])
        }

    loss = np.asarray(fitted.history.get("loss", np.zeros(0)), dtype=np.float64)
    return PosteriorSource(
        model=dynamical_model,
        guide=dynamical_guide,
        params=fitted.params,
        cell_data=cell_data,
        static_kwargs=fitted._static_kwargs(),
        cell_plate="units",
        event_dims={
            "z": ["steps", "latents"],
            "z_inv": ["latents_invariant"],
            "lag_graph": ["lags", "parents"],
            "x": ["steps", "features"],
        },
        coords={
            "steps": list(range(fitted.n_steps)),
            "features": list(fitted.feature_names),
            "latents": latents,
            "parents": latents,
            "lags": list(range(1, config.n_lags + 1)),
            "domains": list(fitted.domain_names),
            "latents_invariant": [f"z_inv_{k}" for k in range(config.n_latent_invariant)],
        },
        cell_names=[f"unit{i}" for i in range(cell_data["x"].shape[0])],
        constant_data={
            "u": (["units"], u),
            "domain": (["units"], np.asarray(fitted.domain_names, dtype=str)[u]),
        },
        sample_stats={"elbo": (["step"], -loss)},
        derived=derived,
        attrs={
            "model": fitted.spec_name,
            "mode": "sequence",
            "likelihood": config.likelihood_block.name,
            "n_latent": config.n_latent,
            "n_lags": config.n_lags,
            "transition": config.transition,
            "n_steps": int(fitted.fit_info.get("n_steps", loss.size)),
        },
    )


register_converter("ivae", ivae_source)
register_converter("dynamical", dynamical_source)
