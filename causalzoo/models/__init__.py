"""The zoo: one module per model, each a NumPyro model, its guide and a :class:`ModelSpec`."""

from . import sparse_perturbation
from ._spec import ModelSpec, get_model, list_models, register_model
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

__all__ = [
    "ModelSpec",
    "get_model",
    "list_models",
    "register_model",
    "sparse_perturbation",
    "SparsePerturbationConfig",
    "sparse_perturbation_model",
    "sparse_perturbation_guide",
]
