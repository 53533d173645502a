"""The zoo: one module per model, each a NumPyro model, its guide and a :class:`ModelSpec`."""

from . import dynamical, ivae, sparse_perturbation
from ._spec import ModelSpec, get_model, list_models, register_model
from .dynamical import DynamicalConfig, dynamical_guide, dynamical_model
from .handlers import condition, do
from .ivae import IVAEConfig, ivae_guide, ivae_model
from .sparse_perturbation import (
    SparsePerturbationConfig,
    sparse_perturbation_guide,
    sparse_perturbation_model,
)

register_model(
    ModelSpec(
        name="sparse_perturbation",
        model=sparse_perturbation_model,
        guide=sparse_perturbation_guide,
        config_class=SparsePerturbationConfig,
        summary="PerturbedVAE-style sparse perturbation VAE with a latent linear-Gaussian SCM "
        "(SAMS-VAE when W = 0, B = 0, no alignment)",
        identifiability="z_resp up to permutation and scaling; z_inv up to a block-linear map "
        "(sparse, varied perturbation shifts; injective decoder)",
        plates={"cells": "cells", "perturbations": "perturbations"},
        generator="causalzoo.identifiability.generators.sparse_perturbation",
        user_class="causalzoo.api.SparsePerturbationVAE",
        references=(
            "Jiang et al. 2026, arXiv:2605.19343 (PerturbedVAE)",
            "Bereket & Karaletsos 2023, NeurIPS (SAMS-VAE)",
        ),
    )
)
register_model(
    ModelSpec(
        name="ivae",
        model=ivae_model,
        guide=ivae_guide,
        config_class=IVAEConfig,
        summary="Identifiable VAE: conditionally factorised Gaussian prior p(z | u), "
        "x = f(z) + noise; the reference entry of the identifiability toolkit",
        identifiability="z up to permutation and component-wise affine maps (scaling only "
        "with a variance-only prior); needs an injective decoder and sufficient variability "
        "of p(z | u) across >= 2d + 1 values of u",
        plates={"cells": "cells"},
        generator="causalzoo.identifiability.generators.ivae",
        user_class="causalzoo.api.IVAE",
        references=("Khemakhem et al. 2020, AISTATS (iVAE)",),
    )
)

register_model(
    ModelSpec(
        name="dynamical",
        model=dynamical_model,
        guide=dynamical_guide,
        config_class=DynamicalConfig,
        summary="CITE-VAE-style dynamical latent causal model: time-lagged latents with a "
        "learned sparse lag graph, domains shifting the mechanisms of sparse targets "
        "(sequence mode; snapshot mode in causalzoo.models.dynamical_snapshot)",
        identifiability="time-lagged latents up to permutation and component-wise invertible "
        "maps (injective decoder; noise independent given history and domain; sufficient "
        "variability across domains); z_inv up to a block-invertible map",
        plates={"units": "units", "steps": "steps", "latents": "latents",
                "domains": "domains"},
        generator="causalzoo.identifiability.generators.leap_nonstationary",
        user_class="causalzoo.api.DynamicalCausalVAE",
        references=(
            "Jiang et al. 2026, arXiv:2605.25581 (CITE-VAE)",
            "Yao et al. 2022, ICLR (LEAP)",
            "Yao et al. 2022, NeurIPS (TDRL)",
        ),
    )
)

__all__ = [
    "ModelSpec",
    "get_model",
    "list_models",
    "register_model",
    "do",
    "condition",
    "sparse_perturbation",
    "dynamical",
    "DynamicalConfig",
    "dynamical_model",
    "dynamical_guide",
    "ivae",
    "IVAEConfig",
    "ivae_model",
    "ivae_guide",
    "SparsePerturbationConfig",
    "sparse_perturbation_model",
    "sparse_perturbation_guide",
]
