"""AnnData adapters: perturbation-label parsing, validation, set-up and array extraction.

This package is the only place that knows about AnnData; models consume the numpy arrays
that :func:`extract_arrays` returns.
"""

from .anndata import (
    AnnDataRegistry,
    densify,
    encode_covariates,
    extract_arrays,
    get_counts,
    get_registry,
    setup_anndata,
)
from .perturbations import (
    build_vocabulary,
    canonical_condition,
    design_matrix,
    normalize_control,
    parse_perturbation,
)
from .streaming import CellSource

__all__ = [
    "AnnDataRegistry",
    "CellSource",
    "build_vocabulary",
    "canonical_condition",
    "densify",
    "design_matrix",
    "encode_covariates",
    "extract_arrays",
    "get_counts",
    "get_registry",
    "normalize_control",
    "parse_perturbation",
    "setup_anndata",
]
