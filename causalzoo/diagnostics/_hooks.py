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
    from ..data.streaming import is_backed
    from ..models.sparse_perturbation import sparse_perturbation_guide, sparse_perturbation_model

    target = _cells_of(fitted, adata)
    # a backed AnnData's matrix stays on disk (x reads its rows when sliced): the converter
    # reads it a chunk of cells at a time
    arrays = fitted._arrays_to_encode(target) if is_backed(target) else fitted._arrays(target)
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
        "scm_edges": [f"z_resp_{c}->z_resp_{r}" for r, c in zip(rows, cols, strict=True)],
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
    # a backed AnnData's observations stay on disk: the converter reads them a chunk at a time
    arrays = fitted._arrays_to_encode(target)
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


def _acting_domain_shifts(config, active=1.0):
    """The ``derived`` hook of both dynamical converters: the per-domain shifts the model
    applies (``noise_modulation`` decides whether the targets gate the noise-scale shift),
    times ``active`` (0 for a control domain, whose mechanisms are the base ones)."""
    from ..models.dynamical import domain_shifts

    def derived(posterior):
        if not {"target", "mean_shift", "log_scale_shift"} <= set(posterior):
            return {}
        mean, log_scale = domain_shifts(config, posterior["target"], posterior["mean_shift"],
                                        posterior["log_scale_shift"])
        out = {
            "domain_shift": (["domains", "latents"], active * np.asarray(mean)),
            "domain_log_scale_shift": (["domains", "latents"], active * np.asarray(log_scale)),
        }
        if "weight_shift" in posterior and "lag_graph" in posterior:
            # what a domain adds to the lag weights: gated by its targets and the graph
            weights = (np.asarray(posterior["target"])[..., None, None]
                       * np.asarray(posterior["weight_shift"])
                       * np.asarray(posterior["lag_graph"])[..., None, :, :, :])
            out["domain_weight_shift"] = (["domains", "latents", "lags", "parents"],
                                          active * weights)
        return out

    return derived


def dynamical_source(fitted, data=None) -> PosteriorSource:
    """The :class:`PosteriorSource` of a fitted :class:`causalzoo.DynamicalCausalVAE` in
    sequence mode. ``data`` is ``None`` (the training sequences) or ``{"x": (units, steps,
    features), "u": (units,) codes}`` for other units. A snapshot-mode model goes to
    :func:`dynamical_snapshot_source`."""
    from ..api.dynamical_snapshot import SnapshotDynamicalCausalVAE
    from ..models.dynamical import dynamical_guide, dynamical_model

    if isinstance(fitted, SnapshotDynamicalCausalVAE):
        return dynamical_snapshot_source(fitted, data)
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
        if x.shape[1:] != (fitted.n_steps, fitted.n_features) or u.shape not in (
                (x.shape[0],), x.shape[:2]):
            raise CausalZooError(
                f"x has shape {x.shape} and u {u.shape}; the model was fitted on (units, "
                f"{fitted.n_steps}, {fitted.n_features}) with one code per unit (units,) "
                "or per unit and step (units, steps)."
            )
    config = fitted.config
    cell_data = {"x": np.asarray(x, np.float32), "u": u}
    if config.likelihood_block.uses_library:
        cell_data["library_size"] = np.maximum(cell_data["x"].sum(-1), 1.0)
    latents = [f"z_{i}" for i in range(config.n_latent)]

    derived = _acting_domain_shifts(config)

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
            "weight_shift": ["lags", "parents"],
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
            "u": (["units", "steps"][:u.ndim], u),
            "domain": (["units", "steps"][:u.ndim],
                       np.asarray(fitted.domain_names, dtype=str)[u]),
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
# one spec name for both modes of the dynamical entry: dynamical_source dispatches on the class
register_converter("dynamical", dynamical_source)


def _snapshot_cells(fitted, adata):
    """Expression, library sizes, perturbation codes, time points and grid steps of the
    cells to analyse: the training cells (``adata=None``) or other cells set up like them.
    The expression of a backed AnnData stays on disk (``BackedRows``, read per chunk)."""
    from ..api.dynamical_snapshot import _cells_expression
    from ..data.validation import check_obs_keys, check_perturbation_column, check_time_column

    reg = fitted.registry
    if adata is None:
        if fitted.x is None:
            raise CausalZooError(
                "This DynamicalCausalVAE was loaded without its cells: pass them, "
                "to_datatree(model, adata), or load it with cz.load(path, adata=adata)."
            )
        return (fitted.x, fitted._library_size, fitted.u, fitted.time, fitted.time_index,
                [str(c) for c in fitted.adata.obs_names])
    if not (hasattr(adata, "obs") and hasattr(adata, "var_names")):
        raise CausalZooError(
            f"Snapshot-mode cells go in as an AnnData with the set-up genes, the time column "
            f"{reg.time_key!r}"
            + (f" and the perturbation column {reg.perturbation_key!r}"
               if reg.perturbation_key else "")
            + f"; got {type(adata).__name__}."
        )
    x, library_size = _cells_expression(adata, reg)
    time = check_time_column(adata, reg.time_key)
    # no extrapolation: the model is scored on the fitted grid (predict() extrapolates)
    steps = reg.steps_of(time, extrapolate=True)
    if (steps >= reg.n_times).any():
        late = float(np.asarray(time)[np.flatnonzero(steps >= reg.n_times)[0]])
        raise CausalZooError(
            f"Time point {late:g} is past the fitted time grid (last: "
            f"{reg.time_values[-1]:g}); to_datatree scores cells at the fitted time points "
            "only. Drop those cells, or sample such times with predict(perturbation, time)."
        )
    if reg.perturbation_key is None:
        u = np.zeros(adata.n_obs, np.int32)
    else:
        check_obs_keys(adata, [reg.perturbation_key], role="perturbation_key")
        check_perturbation_column(adata, reg.perturbation_key)
        u = reg.codes_of(adata.obs[reg.perturbation_key].to_numpy())
    return x, library_size, u, time, steps, [str(c) for c in adata.obs_names]


def dynamical_snapshot_source(fitted, adata=None) -> PosteriorSource:
    """The :class:`PosteriorSource` of a fitted :class:`causalzoo.DynamicalCausalVAE` in
    snapshot mode (each cell measured once, at its own time point). ``adata`` is ``None``
    (the training cells) or other cells with the set-up genes, time and perturbation
    columns, at time points of the fitted grid."""
    from ..data.streaming import BackedRows
    from ..models.dynamical_snapshot import (
        N_PARTICLES,
        domain_activity,
        snapshot_guide,
        snapshot_model,
    )

    x, library_size, u, time, steps, cell_names = _snapshot_cells(fitted, adata)
    reg, config = fitted.registry, fitted.config
    # a backed AnnData's expression stays on disk: the converter reads it a chunk at a time
    cell_data = {"x": x if isinstance(x, BackedRows) else np.asarray(x, np.float32),
                 "u": np.asarray(u, np.int32), "time_index": np.asarray(steps, np.int32)}
    if config.likelihood_block.uses_library:
        cell_data["library_size"] = np.asarray(library_size, np.float32)
    k = config.n_latent
    n_particles = getattr(fitted, "n_particles", N_PARTICLES)
    latents = [f"z_{i}" for i in range(k)]
    # 0 for the control domain, whose mechanisms are the base ones whatever `target` says
    active = np.asarray(domain_activity(fitted.n_domains, fitted.control_domain))

    derived = _acting_domain_shifts(config, active)

    loss = np.asarray(fitted.history.get("loss", np.zeros(0)), dtype=np.float64)
    constant_data = {
        "u": (["cells"], cell_data["u"]),
        "perturbation": (["cells"], np.asarray(reg.domain_names, dtype=str)[cell_data["u"]]),
        "time": (["cells"], np.asarray(time, np.float64)),
        "time_index": (["cells"], cell_data["time_index"]),
        "grid_time": (["steps"], np.asarray(reg.time_values, np.float64)),
    }
    if "library_size" in cell_data:
        constant_data["library_size"] = (["cells"], cell_data["library_size"])
    return PosteriorSource(
        model=snapshot_model,
        guide=snapshot_guide,
        params=fitted.params,
        cell_data=cell_data,
        static_kwargs=fitted._static_kwargs(),
        event_dims={
            "z": ["latents"],
            "z_inv": ["latents_invariant"],
            "lag_graph": ["lags", "parents"],
            "x": ["features"],
        },
        coords={
            "features": list(reg.feature_names),
            "latents": latents,
            "parents": latents,
            "lags": list(range(1, config.n_lags + 1)),
            "domains": list(reg.domain_names),
            "latents_invariant": [f"z_inv_{j}" for j in range(config.n_latent_invariant)],
            "steps": list(range(reg.n_times)),
        },
        cell_names=cell_names,
        constant_data=constant_data,
        sample_stats={"elbo": (["step"], -loss)},
        derived=derived,
        # each cell's prior is a mixture over the particle paths of its domain: its
        # (cells, particles, latents) arrays, not the features, bound the chunk size (the
        # flow prior's components carry four parameter arrays and two log-densities)
        cell_floats=(8 if getattr(config, "prior", "gaussian") == "flow" else 3) * n_particles * k,
        attrs={
            "model": fitted.spec_name,
            "mode": "snapshot",
            "likelihood": config.likelihood_block.name,
            "n_latent": k,
            "n_lags": config.n_lags,
            "transition": config.transition,
            "prior": getattr(config, "prior", "gaussian"),
            "time_key": reg.time_key,
            "perturbation_key": reg.perturbation_key or "",
            "control": reg.control or "",
            "n_particles": n_particles,
            "n_steps": int(fitted.fit_info.get("n_steps", loss.size)),
        },
    )
