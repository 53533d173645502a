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
